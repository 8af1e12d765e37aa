"""A dataset snapshot of solid-colour images and a trainer that 'learns' colours, for the label-audit tests.

The fake fold model predicts an image's class from its colour, so a label that disagrees with the colour is
what the audit must flag: the audit's folds, bookkeeping and findings are under test, not a model.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from PIL import Image

from pipeline.labels.dataset import data_yaml
from pipeline.labels.folds import snapshot_names
from storage.db import session_scope
from storage.tables import File, Sample
from tests.pipeline.training_fakes import FakeTrainer

CLASSES = ["comic", "fairy_tale", "painting"]
COLOURS = {"comic": (220, 30, 30), "fairy_tale": (30, 200, 40), "painting": (40, 40, 220)}


def make_snapshot(engine, home: Path, images: list[tuple[str, str]], *, version: int = 1) -> Path:
    """`images`: (colour class, given label) each, as 16 x 16 solid colours; returns the snapshot's data.yaml."""
    pictures = []
    for n, (colour, given) in enumerate(images):
        r, g, b = COLOURS[colour]
        pictures.append((Image.new("RGB", (16, 16), (r, g, (b + n) % 256)), given))  # n: every content differs
    return snapshot_of(engine, home, pictures, CLASSES, version=version)


def snapshot_of(engine, home: Path, pictures: list[tuple[Image.Image, str]], classes: list[str], *,
                version: int = 1) -> Path:
    """A dataset snapshot of these (picture, given class) pairs, every fifth in val; each image gets a File and
    a Sample row under its content hash, as the labelled pipeline records them. Returns its data.yaml."""
    snap = home / "dataset" / f"v{version:06d}"
    for sub in ("images/train", "images/val", "labels/train", "labels/val"):
        (snap / sub).mkdir(parents=True, exist_ok=True)
    with session_scope(engine) as s:
        for n, (picture, given) in enumerate(pictures):
            split = "val" if n % 5 == 4 else "train"
            path = snap / "images" / split / f"cover{n:03d}.png"
            picture.save(path)
            (snap / "labels" / split / f"cover{n:03d}.txt").write_text(f"{classes.index(given)} 0.5 0.5 1 1\n")
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            f = File(folder="labeled", source_path=f"{given}/cover{n:03d}.png", original_name=f"cover{n:03d}.png",
                     size=path.stat().st_size, sha256=sha, state="processed", location=str(path.relative_to(home)))
            s.add(f)
            s.flush()
            s.add(Sample(image_file_id=f.id, image_sha256=sha, source_format="folder", width=picture.width,
                         height=picture.height))
    (snap / "data.yaml").write_text(data_yaml(classes, "images/train"))
    return snap / "data.yaml"


def snapshot_prepare(data: Path, classes: list[str] = CLASSES):
    """The supervisor's `prepare`: the run audits this snapshot."""
    return lambda engine, settings: {"data": str(data), "dataset_version_id": None, "fingerprint": "f" * 64,
                                     "classes": list(classes)}


class ColourTrainer(FakeTrainer):
    """FakeTrainer's weights and epochs; predicts by colour. `epoch_seconds` slows each epoch (SIGTERM tests)."""

    def __init__(self, *, epoch_seconds: float = 0.0, **kw):
        super().__init__(**kw)
        self.epoch_seconds = epoch_seconds
        self.predicted: list[list[Path]] = []

    def train(self, spec, **kw):
        if self.epoch_seconds:
            on_epoch = kw.pop("on_epoch")

            def slow(p):
                on_epoch(p)
                time.sleep(self.epoch_seconds)

            kw["on_epoch"] = slow
        return super().train(spec, **kw)

    def predict_probs(self, weights: Path, images: list[Path], *, imgsz: int, device) -> list[dict[str, float]]:
        self.predicted.append(list(images))
        names = snapshot_names(weights.parent.parent / "data")
        out = []
        for p in images:
            with Image.open(p) as im:
                rgb = im.convert("RGB").getpixel((0, 0))
            near = min(names, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], rgb)))
            out.append({c: 0.9 if c == near else 0.1 / (len(names) - 1) for c in names})
        return out


def slow_trainer() -> ColourTrainer:
    """For `python -m pipeline.training.job --trainer tests.pipeline.audit_fakes:slow_trainer`."""
    return ColourTrainer(epoch_seconds=0.5)
