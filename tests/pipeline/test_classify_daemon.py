"""The real daemon with its real classifier: images wait for a model, are classified as soon as one is
promoted, and a later promotion is picked up mid-stream without a restart."""

import shutil

import pytest

from pipeline.registry import promote_version
from storage.db import session_scope
from storage.tables import ModelVersion
from tests.conftest import coco_images
from tests.watcher.conftest import configure, home_engine, predictions, rows, running, wait_for
from watcher.config import load_config
from watcher.daemon import build_step


def install_version(home, engine, weights, version):
    folder = home / "models" / version / "weights"
    folder.mkdir(parents=True)
    shutil.copy(weights, folder / "best.pt")
    with session_scope(engine) as s:
        s.add(ModelVersion(version=version, task="detect", path=f"models/{version}", state="candidate"))
    promote_version(engine, version)


@pytest.mark.slow
def test_waiting_images_are_classified_when_a_model_is_promoted_then_hot_swapped(home, detect_weights):
    configure(home, model={"imgsz": 96, "review_below": 0.0}, watch={"rescan_seconds": 3600})
    cfg = load_config(home / "coverwatch.yaml")
    engine = home_engine(home)
    images = coco_images(12)
    step = build_step(cfg, engine)
    try:
        with running(home, step=step):
            for src in images[:4]:
                shutil.copy(src, home / "inbox" / src.name)
            wait_for(lambda: len([r for r in rows(home) if r.state == "awaiting_model"]) == 4, timeout=60)
            assert sorted(p.name for p in (home / "inbox").iterdir()) == sorted(s.name for s in images[:4])

            install_version(home, engine, detect_weights, "v0001")
            wait_for(lambda: len([r for r in rows(home) if r.state == "processed"]) == 4, timeout=120)

            for src in images[4:8]:
                shutil.copy(src, home / "inbox" / src.name)
            wait_for(lambda: len([r for r in rows(home) if r.state == "processed"]) == 8, timeout=120)
            install_version(home, engine, detect_weights, "v0002")
            for src in images[8:12]:
                shutil.copy(src, home / "inbox" / src.name)
            wait_for(lambda: len([r for r in rows(home) if r.state == "processed"]) == 12, timeout=120)
    finally:
        engine.dispose()
    preds = predictions(home)
    assert len(preds) == 12 and len({p.file_id for p in preds}) == 12  # none dropped, none twice
    versions = [p.model_version for p in preds]
    assert versions[:8] == ["v0001"] * 8 and versions[8:] == ["v0002"] * 4
    assert {p.backend for p in preds} == {"onnx"} and {p.imgsz for p in preds} == {96}
    assert all(p.infer_ms is not None and p.decode_ms is not None for p in preds)
