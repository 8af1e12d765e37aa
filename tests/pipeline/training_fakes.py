"""A scripted trainer, an in-process job and small row builders for the training tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select

from pipeline.training.backoff import AttemptSpec, TrainingInterrupted
from pipeline.training.registry import Evaluation
from pipeline.training.job import run_job
from pipeline.settings import DatasetOptions, TrainingSettings
from storage.db import session_scope
from storage.tables import File, Sample, TrainingRun

CLASSES = ["comic", "fairy_tale", "painting"]


def out_of_memory(message: str = "CUDA out of memory. Tried to allocate 2.00 GiB"):
    import torch

    return torch.cuda.OutOfMemoryError(message)


class FakeTrainer:
    """Trains nothing: writes weights files, reports epochs, and raises out-of-memory as scripted.

    `oom(spec)` says whether an attempt runs out of memory; `scores` maps a version folder name to the mAP50-95
    its best.pt evaluates to (default 0.5); `classes` maps a version to {class: figures} that replace that class's
    default figures (recall 0.5 on 3 images), e.g. {"v0002": {"painting": {"recall": 0.42, "images": 12}}}, and a
    class given None is left out of that version's figures; `confusion` and `calibration` map a version to what
    its Evaluation carries; `stop_after` makes should_stop() true after that many epochs.
    """

    def __init__(self, *, oom=lambda spec: False, scores: dict | None = None, fail: Exception | None = None,
                 wrapped: bool = False, classes: dict | None = None, confusion: dict | None = None,
                 calibration: dict | None = None):
        self.oom, self.scores, self.fail, self.wrapped = oom, scores or {}, fail, wrapped
        self.classes, self.confusion, self.calibration = classes or {}, confusion or {}, calibration or {}
        self.calls: list[AttemptSpec] = []
        self.evaluated: list[Path] = []

    def train(self, spec, *, task, data, out_dir, epochs, patience, device, workers, on_epoch, should_stop):
        self.calls.append(spec)
        if self.fail is not None:
            raise self.fail
        if self.oom(spec):
            if self.wrapped:  # Ultralytics' form: a RuntimeError carrying the CUDA message
                raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (GPU 0; 3.82 GiB total)")
            raise out_of_memory()
        weights = out_dir / "weights"
        weights.mkdir(parents=True, exist_ok=True)
        start = int((weights / "last.pt").read_text()) if spec.resume else 0
        for epoch in range(start, epochs):
            if should_stop():
                raise TrainingInterrupted()
            (weights / "last.pt").write_text(str(epoch + 1))
            (weights / "best.pt").write_text(f"best of {out_dir.name}")
            on_epoch({"epoch": epoch + 1, "epochs": epochs, "losses": {"train/box_loss": 1.0 / (epoch + 1)},
                      "eta_seconds": float(epochs - epoch - 1), "batch": spec.batch if spec.batch > 0 else 8})

    def evaluate(self, weights, *, task, data, device):
        self.evaluated.append(Path(weights))
        version = Path(weights).parent.parent.name
        score = self.scores.get(version, 0.5)
        scripted = self.classes.get(version, {})
        per_class = [{"class_name": c, "precision": 0.6, "recall": 0.5, "map50": score + 0.1, "map50_95": score,
                      "images": 3, "instances": 4, **scripted.get(c, {})}
                     for c in [*CLASSES, *(c for c in scripted if c not in CLASSES)] if scripted.get(c, {}) is not None]
        return Evaluation({"precision": 0.6, "recall": 0.5, "map50": score + 0.1, "map50_95": score,
                           "instances": 10}, per_class, self.confusion.get(version), self.calibration.get(version))


class InlineJob:
    """A finished 'process': run_job ran synchronously in this process."""

    def __init__(self, rc: int):
        self.rc, self.pid = rc, None

    def poll(self):
        return self.rc

    def wait(self, timeout=None):
        return self.rc

    def send_signal(self, sig):
        pass

    def kill(self):
        pass


def inline_spawn(engine, trainer, **kw):
    return lambda run_id, log_path: InlineJob(run_job(engine, run_id, trainer=trainer, **kw))


def fake_prepare(classes=CLASSES, fingerprint="f" * 64):
    return lambda engine, settings: {"data": str(settings.dataset_dir / "v000001" / "data.yaml"),
                                     "dataset_version_id": None, "fingerprint": fingerprint, "classes": list(classes)}


def settings_for(home: Path, **kw) -> TrainingSettings:
    """A config's training settings (watcher.config's defaults) with small runs and `kw` changed."""
    from watcher.config import Config, training_settings

    workers = kw.pop("workers", 0)
    values = dict(epochs=2, imgsz=640, batch=16, min_new_labels=5)
    values.update(kw)
    return training_settings(Config(home=home, training=values), workers=workers)


def options_for(near_duplicate_bits: int = 6, **training) -> DatasetOptions:
    """The dataset options of a `training:` section saying `training` and `watch.near_duplicate_bits` (the rest:
    the config's defaults)."""
    from watcher.config import Config, dataset_options

    return dataset_options(Config(training=training, watch={"near_duplicate_bits": near_duplicate_bits}))


def add_samples(engine, n: int, *, tag: str = "s") -> None:
    """n labelled images as the labelled pipeline records them (a file row and a sample row each)."""
    with session_scope(engine) as s:
        for i in range(n):
            sha = hashlib.sha256(f"{tag}{i}".encode()).hexdigest()
            f = File(folder="labeled", source_path=f"{tag}{i}.jpg", original_name=f"{tag}{i}.jpg", size=1,
                     sha256=sha, state="processed")
            s.add(f)
            s.flush()
            s.add(Sample(image_file_id=f.id, image_sha256=sha, source_format="yolo", width=10, height=10))


def runs(engine) -> list[TrainingRun]:
    with session_scope(engine) as s:
        out = list(s.scalars(select(TrainingRun).order_by(TrainingRun.id)))
        for r in out:
            r.attempts  # load while the session is open
        return out
