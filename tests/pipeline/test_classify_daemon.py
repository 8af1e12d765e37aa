"""The real daemon with its classifier: images wait for a model, are classified as soon as one is promoted, and
a later promotion is picked up mid-stream without a restart. Once on pipeline.inference.model_io.FakeModel (fast, and which
model answered is certain), once on a real Ultralytics model."""

import shutil
from pathlib import Path

import pytest

from pipeline.inference.classify import ClassifyStep
from pipeline.errors import ModelUnavailable
from pipeline.inference.model_io import FakeModel
from pipeline.training.registry import champion_weights, promote_version
from storage.db import session_scope
from storage.tables import ModelVersion
from tests.conftest import coco_images
from tests.watcher.conftest import configure, home_engine, predictions, rows, running, wait_for
from watcher.config import load_config
from watcher.daemon import build_step


def install_version(home, engine, weights, version):
    folder = home / "models" / version / "weights"
    folder.mkdir(parents=True)
    if weights is None:
        (folder / "best.pt").write_bytes(b"not read: the step opens fakes")
    else:
        shutil.copy(weights, folder / "best.pt")
    with session_scope(engine) as s:
        s.add(ModelVersion(version=version, task="detect", path=f"models/{version}", state="candidate"))
    promote_version(engine, version)


def drop_promote_swap(home: Path, engine, step, images: list[Path], *, weights: Path | None, timeout: float) -> None:
    """The daemon running `step`: 4 images wait for a first model (and stay in inbox/), v0001 is promoted and
    classifies them and 4 more, then v0002 replaces it for the last 4, all without a restart."""
    def processed(n):
        wait_for(lambda: len([r for r in rows(home) if r.state == "processed"]) == n, timeout=timeout)

    def drop(batch):
        for src in batch:
            shutil.copy(src, home / "inbox" / src.name)

    with running(home, step=step):
        drop(images[:4])
        wait_for(lambda: len([r for r in rows(home) if r.state == "awaiting_model"]) == 4, timeout=60)
        assert sorted(p.name for p in (home / "inbox").iterdir()) == sorted(s.name for s in images[:4])
        install_version(home, engine, weights, "v0001")
        processed(4)
        drop(images[4:8])
        processed(8)
        install_version(home, engine, weights, "v0002")
        drop(images[8:12])
        processed(12)


def test_a_promotion_while_running_swaps_the_fake_model_without_a_restart(home):
    configure(home, model={"imgsz": 64, "review_below": 0.0}, watch={"rescan_seconds": 3600})
    cfg = load_config(home / "coverwatch.yaml")
    engine = home_engine(home)
    fakes = {v: FakeModel(names=["cover", "other"], answer=[0.9, 0.1], version=v) for v in ("v0001", "v0002")}

    def open_model(weights):
        version = Path(weights).parent.parent.name  # models/<version>/weights/best.pt
        if version not in fakes:
            raise ModelUnavailable(f"model.weights: {weights} is not on disk")
        return fakes[version]

    step = ClassifyStep(task="classify", weights="yolo11n-cls.pt", imgsz=32, batch=4, conf=0.25, review_dir=None,
                        review_below=0.0, max_pixels=cfg.watch.max_pixels, allowed_roots=[cfg.path("models")],
                        model_source=lambda: champion_weights(engine, home), open_model=open_model)
    images = coco_images(12)
    try:
        drop_promote_swap(home, engine, step, images, weights=None, timeout=60)
    finally:
        engine.dispose()
    preds = predictions(home)
    assert len(preds) == 12 and len({p.file_id for p in preds}) == 12  # none dropped, none twice
    assert [p.model_version for p in preds] == ["v0001"] * 8 + ["v0002"] * 4
    assert sum(n for n, _ in fakes["v0001"].calls) == 8 and sum(n for n, _ in fakes["v0002"].calls) == 4
    assert {p.backend for p in preds} == {"fake"} and {p.predicted_class for p in preds} == {"cover"}


@pytest.mark.slow
@pytest.mark.ultralytics
def test_waiting_images_are_classified_when_a_model_is_promoted_then_hot_swapped(home, detect_weights):
    configure(home, model={"imgsz": 96, "review_below": 0.0}, watch={"rescan_seconds": 3600})
    cfg = load_config(home / "coverwatch.yaml")
    engine = home_engine(home)
    images = coco_images(12)
    step = build_step(cfg, engine)
    try:
        drop_promote_swap(home, engine, step, images, weights=detect_weights, timeout=120)
    finally:
        engine.dispose()
    preds = predictions(home)
    assert len(preds) == 12 and len({p.file_id for p in preds}) == 12  # none dropped, none twice
    versions = [p.model_version for p in preds]
    assert versions[:8] == ["v0001"] * 8 and versions[8:] == ["v0002"] * 4
    assert {p.backend for p in preds} == {"onnx"} and {p.imgsz for p in preds} == {96}
    assert all(p.infer_ms is not None and p.decode_ms is not None for p in preds)
