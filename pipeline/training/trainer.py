"""The one place that trains and evaluates with Ultralytics (imported lazily: only the training process loads it).

    >>> t = UltralyticsTrainer()
    >>> t.train(AttemptSpec("yolo11n.yaml", "yolo11n.yaml", imgsz=640, batch=-1), task="detect",
    ...         data=Path("dataset/v000003/data.yaml"), out_dir=Path("models/v0004"), epochs=100, patience=20,
    ...         device="auto", workers=8, on_epoch=print, should_stop=lambda: False)
    >>> t.evaluate(Path("models/v0004/weights/best.pt"), task="detect", data=..., device="auto").overall
    {'precision': 0.61, 'recall': 0.55, 'map50': 0.58, 'map50_95': 0.41, 'images': 25, 'instances': 84}

Out-of-memory errors are not handled here: they propagate to pipeline.training.job, which steps down the ladder.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from pipeline.training.backoff import AttemptSpec, TrainingInterrupted
from pipeline.inference.device import resolve_device
from pipeline.errors import TrainingError
from pipeline.labels.formats import is_class_name
from pipeline.training.quality import classify_evaluation, detect_confusion
from pipeline.training.registry import Evaluation

log = logging.getLogger(__name__)


class UltralyticsTrainer:
    def __init__(self, *, nice: int = 10):
        self.nice = nice
        self._niced = False

    def train(self, spec: AttemptSpec, *, task: str, data: Path, out_dir: Path, epochs: int, patience: int,
              device, workers: int, on_epoch, should_stop) -> None:
        """One attempt; weights, args.yaml, results.csv and plots land in `out_dir`."""
        from ultralytics import YOLO

        device = resolve_device(device)
        self._lower_priority_on_cpu(device)
        model = YOLO(spec.model, task=task)
        self._callbacks(model, on_epoch, should_stop)
        batch = spec.batch
        if batch == -1 and isinstance(device, (list, tuple)):
            batch = 16 * len(device)  # Ultralytics' auto-batch is single-GPU only
        args = dict(imgsz=spec.imgsz, batch=batch, device=device, workers=workers)
        if spec.resume:
            model.train(resume=spec.model, **args)
            return
        model.train(data=str(_data_for(task, data, out_dir)), epochs=epochs, patience=patience,
                    project=str(out_dir.parent), name=out_dir.name, exist_ok=True, plots=True, verbose=False,
                    **args)

    def evaluate(self, weights: Path, *, task: str, data: Path, device) -> Evaluation:
        """Figures of `weights` on the val split of `data`, at the image size it was trained with: per class
        images, precision, recall (detect: mAP50 too), the confusion matrix, and (classify) the temperature that
        calibrates its confidence on that split (`pipeline.training.quality`)."""
        from ultralytics import YOLO

        with tempfile.TemporaryDirectory(prefix="coverwatch-val-") as tmp:
            model = YOLO(str(weights), task=task)
            view = _data_for(task, data, Path(tmp))
            if task == "classify":
                return _classify_evaluation(model, view / "val", resolve_device(device))
            # plots=True: Ultralytics fills its confusion matrix only then (the plots land in `tmp`).
            r = model.val(data=str(view), split="val", device=resolve_device(device), batch=16, plots=True,
                          verbose=False, project=tmp, name="val", workers=0)
        return _detect_evaluation(r)

    def predict_probs(self, weights: Path, images: list[Path], *, imgsz: int, device) -> list[dict[str, float]]:
        """Class probabilities of a classify model for each image, by class name (the label audit's folds)."""
        from ultralytics import YOLO

        model = YOLO(str(weights), task="classify")
        out = []
        for k in range(0, len(images), 32):
            for r in model.predict([str(p) for p in images[k:k + 32]], imgsz=imgsz, device=resolve_device(device),
                                   verbose=False, batch=32):
                out.append({str(r.names[i]): float(v) for i, v in enumerate(r.probs.data.tolist())})
        return out

    @staticmethod
    def _callbacks(model, on_epoch, should_stop) -> None:
        started: dict = {}

        def batch_end(trainer) -> None:
            if should_stop():
                raise TrainingInterrupted()

        def epoch_start(trainer) -> None:
            started.setdefault("t", time.monotonic())
            started.setdefault("epoch", trainer.epoch)

        def fit_epoch_end(trainer) -> None:  # after last.pt was saved for this epoch
            if trainer.epoch >= trainer.epochs:
                return  # final_eval calls it once more, at epochs + 1, for best.pt's figures
            done = trainer.epoch + 1
            per_epoch = (time.monotonic() - started["t"]) / max(1, done - started["epoch"])
            losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else None
            on_epoch({"epoch": done, "epochs": trainer.epochs, "losses": losses, "batch": trainer.batch_size,
                      "eta_seconds": round(per_epoch * max(0, trainer.epochs - done), 1)})
            if should_stop():
                raise TrainingInterrupted()

        model.add_callback("on_train_epoch_start", epoch_start)
        model.add_callback("on_train_batch_end", batch_end)
        model.add_callback("on_fit_epoch_end", fit_epoch_end)

    def _lower_priority_on_cpu(self, device) -> None:
        if device != "cpu" or self._niced:
            return
        self._niced = True
        log.warning("no CUDA GPU: training on the CPU, slowly, at lower priority so inference keeps going")
        if self.nice:
            os.nice(self.nice)


def _detect_evaluation(r) -> Evaluation:
    box = r.box
    per_image = getattr(r, "nt_per_image", None)
    per_class_n = getattr(r, "nt_per_class", None)
    overall = {"precision": float(box.mp), "recall": float(box.mr), "map50": float(box.map50),
               "map50_95": float(box.map)}
    if per_class_n is not None:
        overall["instances"] = int(sum(per_class_n))
    rows = []
    for i, c in enumerate(box.ap_class_index):
        p, rec, ap50, ap = (float(x) for x in box.class_result(i))
        rows.append({"class_name": r.names[int(c)], "precision": p, "recall": rec, "map50": ap50, "map50_95": ap,
                     "images": int(per_image[c]) if per_image is not None else None,
                     "instances": int(per_class_n[c]) if per_class_n is not None else None})
    matrix = getattr(getattr(r, "confusion_matrix", None), "matrix", None)
    names = [str(r.names[i]) for i in range(len(r.names))]
    return Evaluation(overall, rows, detect_confusion(matrix, names) if matrix is not None else None)


def _classify_evaluation(model, val_dir: Path, device) -> Evaluation:
    """Every val image through the model (Ultralytics' own classify transforms), its softmax row kept."""
    import numpy as np

    names = [str(model.names[i]) for i in range(len(model.names))]
    index = {n: i for i, n in enumerate(names)}
    paths, truth = [], []
    for folder in sorted(p for p in val_dir.iterdir() if p.is_dir()) if val_dir.is_dir() else []:
        if folder.name not in index:
            log.warning("validation class %r is not one of the model's classes; left out", folder.name)
            continue
        for image in sorted(folder.iterdir()):
            paths.append(str(image))
            truth.append(index[folder.name])
    probs = [r.probs.data.float().cpu().numpy()
             for i in range(0, len(paths), 64)
             for r in model.predict(paths[i:i + 64], device=device, batch=16, verbose=False)]
    return classify_evaluation(np.stack(probs) if probs else np.zeros((0, len(names))), np.array(truth, int), names)


def _data_for(task: str, data: Path, scratch: Path) -> Path:
    """Detect trains on the snapshot's data.yaml; classify needs class folders, linked from the snapshot.

    Ultralytics' classification trainer reads only the folders, never train.txt: an image that train.txt lists
    n times (training.balance: oversample) gets n - 1 more links in its class folder, name.rep1.jpg and so on.
    The folder names are the class names (Ultralytics takes the model's `names` from them), so each must be
    one safe folder name inside the view (`_class_folder`): a class name is never a path.
    """
    if task != "classify":
        return data
    import yaml

    snapshot = data.parent
    names = yaml.safe_load(data.read_text(encoding="utf-8"))["names"]
    names = names if isinstance(names, dict) else dict(enumerate(names))
    view = scratch / ".classify-data"
    repeats = _train_repeats(snapshot)
    for split in ("train", "val"):
        for label in sorted((snapshot / "labels" / split).glob("*.txt")):
            first = label.read_text(encoding="utf-8").split()
            images = list((snapshot / "images" / split).glob(f"{label.stem}.*"))
            if not first or not images:
                continue
            image = images[0]
            folder = _class_folder(view / split, names[int(first[0])])
            folder.mkdir(parents=True, exist_ok=True)
            n = repeats.get(image.name, 1) if split == "train" else 1
            for k in range(n):
                dest = folder / (image.name if k == 0 else f"{image.stem}.rep{k}{image.suffix}")
                if not dest.exists():
                    os.symlink(image.resolve(), dest)
    return view


def _class_folder(root: Path, name) -> Path:
    """root/name, refused unless `name` is a valid class name and the folder stays directly inside `root`."""
    folder = root / str(name)
    if not is_class_name(name) or folder.parent != root or not folder.resolve().is_relative_to(root.resolve()):
        raise TrainingError("bad_class_name", f"class name {str(name)[:100]!r} is not a safe folder name; "
                                              "the classify view is not built")
    return folder


def _train_repeats(snapshot: Path) -> dict[str, int]:
    """Image file name -> how often the snapshot's train.txt lists it; {} without one (no oversampling)."""
    counts: dict[str, int] = {}
    try:
        lines = (snapshot / "train.txt").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return counts
    for line in filter(None, (x.strip() for x in lines)):
        name = Path(line).name
        counts[name] = counts.get(name, 0) + 1
    return counts
