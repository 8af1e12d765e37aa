"""Training speed on coco128 through coverwatch's own trainer: seconds per epoch and training images/s.

    .venv/bin/python bench/train.py [--imgsz 320] [--epochs 3] [--batch 16] [--model yolo11n.yaml] [--device auto]

Copies coco128 (from ../shared/datasets/coco128, else the 24 images tests/data/coco24 carries, or --coco) into a
temp folder split about 78% train / 22% val (100 / 28 for coco128), trains
from the architecture YAML (no download), and prints the device name, then per epoch the wall time and the
training images per second (train images / epoch time, validation included, as a user waits for it). The first
epoch carries the warm-up (data caching, cuDNN autotune); compare the later ones across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))

from bench._data import coco_dir, coco_images  # noqa: E402
from pipeline.training.backoff import AttemptSpec  # noqa: E402
from pipeline.inference.device import resolve_device  # noqa: E402
from pipeline.training.trainer import UltralyticsTrainer  # noqa: E402


def copy_coco(src: Path | None, dest: Path) -> tuple[Path, int]:
    import yaml

    src = coco_dir(src)
    images = coco_images(src)
    n_train = round(len(images) * 100 / 128)  # coco128's usual 100 / 28
    for i, image in enumerate(images):
        split = "train" if i < n_train else "val"
        for sub, path in (("images", image), ("labels", src / "labels" / "train2017" / f"{image.stem}.txt")):
            (dest / sub / split).mkdir(parents=True, exist_ok=True)
            if path.exists():
                shutil.copy(path, dest / sub / split / path.name)
    names = yaml.safe_load((src / "data.yaml").read_text())["names"]
    data = dest / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(dest), "train": "images/train", "val": "images/val", "names": names}))
    return data, min(n_train, len(images))


def device_name(device) -> str:
    import torch

    if str(device) != "cpu" and torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    import platform

    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores, torch threads " \
           f"{torch.get_num_threads()})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco", type=Path, default=None, help="a coco128-like folder (default: see bench/_data.py)")
    p.add_argument("--model", default="yolo11n.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="coverwatch-bench-train-") as tmp:
        data, n_train = copy_coco(args.coco, Path(tmp) / "coco")
        marks: list[tuple[int, float]] = []
        started = time.perf_counter()
        UltralyticsTrainer(nice=0).train(
            AttemptSpec(args.model, args.model, imgsz=args.imgsz, batch=args.batch), task="detect", data=data,
            out_dir=Path(tmp) / "run", epochs=args.epochs, patience=args.epochs, device=device,
            workers=args.workers, should_stop=lambda: False,
            on_epoch=lambda prog: marks.append((prog["epoch"], time.perf_counter())))
        total = time.perf_counter() - started
    print(f"device: {device_name(device)}")
    print(f"model {args.model}, imgsz {args.imgsz}, batch {args.batch}, {n_train} train images, "
          f"{args.epochs} epochs, total {total:.1f}s (with model build and final validation)")
    previous = started
    for epoch, t in marks:
        dt = t - previous
        previous = t
        print(f"epoch {epoch}: {dt:6.1f}s  {n_train / dt:7.1f} images/s")


if __name__ == "__main__":
    main()
