"""Tiny real YOLO models, trained once per test session on the carried coco24 (a few seconds each on 2 CPU cores).

`train_tiny_detect` and `train_tiny_classify` are plain functions so bench/throughput.py makes its models the
same way. Each returns a `models/<version>/weights/best.pt` laid out as the registry lays it out.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import COCO, COCO_IMAGES, COCO_LABELS, coco_images

CROP_CLASSES = {0: "person", 2: "car", 56: "chair"}  # coco24 carries 40+, 16 and 35 crops of them


def _yolo_env(workdir: Path) -> None:
    # Never download or pip-install, and keep Ultralytics' settings file out of the user's home.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(workdir / "yolo-config"))


def _install(run_dir: Path, models: Path, version: str) -> Path:
    dest = models / version / "weights"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt"):
        shutil.copy(run_dir / "weights" / name, dest / name)
    return dest / "best.pt"


def copy_coco(dest: Path) -> Path:
    """The carried set stays untouched and Ultralytics writes a labels cache beside the labels: train on a copy."""
    shutil.copytree(COCO_IMAGES, dest / "images" / "train2017")
    shutil.copytree(COCO_LABELS, dest / "labels" / "train2017")
    text = (COCO / "data.yaml").read_text()
    (dest / "data.yaml").write_text(f"path: {dest}\n" + text)
    return dest / "data.yaml"


def train_tiny_detect(workdir: Path, *, imgsz: int = 96, wake_imgsz: int | None = None, version: str = "det-v1"
                      ) -> Path:
    """yolo11n.yaml, 1 epoch on coco24 at `imgsz`, made usable at `wake_imgsz` (see `_wake_up`)."""
    from ultralytics import YOLO

    _yolo_env(workdir)
    data = copy_coco(workdir / "coco")
    YOLO("yolo11n.yaml").train(data=str(data), imgsz=imgsz, epochs=1, batch=16, workers=0, device="cpu",
                               plots=False, val=False, amp=False, project=str(workdir / "runs"), name="detect",
                               exist_ok=True, verbose=False)
    best = _install(workdir / "runs" / "detect", workdir / "models", version)
    _wake_up(best, coco_images(), wake_imgsz or imgsz, lift=True)
    return best


def _wake_up(weights: Path, images: list[Path], imgsz: int, *, lift: bool = False) -> None:
    """Make a 1-epoch model's answer depend on the image.

    After a handful of steps its BatchNorm running statistics are still near their initial values (momentum
    0.03), so in eval mode the signal fades and the output is the same for every image. Recompute them on real
    images. A detector's class scores also all sit near their initial bias (sigmoid ~ 1e-4), under any useful
    `conf`: lift the bias so that a few boxes per image pass 0.25. The pipeline is under test, not the model.
    """
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    net = ckpt["model"].float()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            net(_tensor(images[i:i + 16], imgsz))
        net.eval()
        if lift:
            _lift_class_bias(net, _tensor(images[:16], imgsz))
    ckpt["model"], ckpt["ema"] = net.half(), None
    torch.save(ckpt, weights)


def _lift_class_bias(net, x) -> None:
    import torch

    scores = net(x)[0][:, 4:].clamp(1e-7, 1 - 1e-7)
    best = torch.log(scores / (1 - scores)).flatten(1).amax(1)  # each image's most confident logit
    lift = 1.5 - float(best.median())  # the median image's best box scores sigmoid(1.5) = 0.82
    for seq in net.model[-1].cv3:
        seq[-1].bias += lift


def _tensor(paths: list[Path], imgsz: int):
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as img:
            arrays.append(np.asarray(img.convert("RGB").resize((imgsz, imgsz))))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def make_crops(dest: Path, *, per_class: int = 40) -> Path:
    """A class-folder dataset (train/<class>/, val/<class>/) of coco24 box crops of three classes."""
    from PIL import Image

    counts = dict.fromkeys(CROP_CLASSES, 0)
    for image in coco_images():
        label = COCO_LABELS / f"{image.stem}.txt"
        if not label.exists():
            continue
        with Image.open(image) as im:
            im = im.convert("RGB")
            for n, line in enumerate(label.read_text().splitlines()):
                cls, cx, cy, w, h = line.split()
                cls = int(cls)
                if cls not in counts or counts[cls] >= per_class:
                    continue
                box = _pixel_box(float(cx), float(cy), float(w), float(h), *im.size)
                if min(box[2] - box[0], box[3] - box[1]) < 12:  # Ultralytics skips images under 10 px
                    continue
                split = "val" if counts[cls] % 5 == 4 else "train"
                folder = dest / split / CROP_CLASSES[cls]
                folder.mkdir(parents=True, exist_ok=True)
                im.crop(box).save(folder / f"{image.stem}_{n}.jpg", quality=90)
                counts[cls] += 1
    return dest


def _pixel_box(cx: float, cy: float, w: float, h: float, iw: int, ih: int) -> tuple[int, int, int, int]:
    return (max(0, int((cx - w / 2) * iw)), max(0, int((cy - h / 2) * ih)),
            min(iw, int((cx + w / 2) * iw)), min(ih, int((cy + h / 2) * ih)))


def train_tiny_classify(workdir: Path, *, imgsz: int = 32, version: str = "cls-v1") -> Path:
    """yolo11n-cls.yaml, 1 epoch at `imgsz` on three classes of coco24 crops."""
    from ultralytics import YOLO

    _yolo_env(workdir)
    data = make_crops(workdir / "crops")
    YOLO("yolo11n-cls.yaml").train(data=str(data), imgsz=imgsz, epochs=1, batch=16, workers=0, device="cpu",
                                   plots=False, val=False, amp=False, project=str(workdir / "runs"),
                                   name="classify", exist_ok=True, verbose=False)
    best = _install(workdir / "runs" / "classify", workdir / "models", version)
    _wake_up(best, sorted((data / "train").glob("*/*.jpg")), imgsz)
    return best


@pytest.fixture(scope="session")
def detect_weights(tmp_path_factory) -> Path:
    """models/det-v1/weights/best.pt: a usable yolo11n detector trained at 96."""
    return train_tiny_detect(tmp_path_factory.mktemp("detect"))


@pytest.fixture(scope="session")
def classify_weights(tmp_path_factory) -> Path:
    """models/cls-v1/weights/best.pt: a yolo11n-cls model on person/car/chair crops at 32."""
    return train_tiny_classify(tmp_path_factory.mktemp("classify"))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder
