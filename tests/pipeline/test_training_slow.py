"""The real Ultralytics path at tiny sizes on coco24 (CPU): labelled drops to a champion, resume, rejection."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

import watcher.jobs.upkeep as upkeep
from pipeline.training.registry import list_models
from pipeline.training.queue import request_training, run_summary
from pipeline.training.supervisor import TrainingSupervisor
from storage.db import session_scope
from storage.tables import ModelMetric, ModelVersion, TrainingRun
from tests.conftest import COCO_LABELS
from tests.labelimg import coco_drop, coco_names, labelled_images
from tests.pipeline.training_fakes import runs, settings_for
from tests.watcher.conftest import configure, home_engine, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ultralytics]

TINY = {"epochs": 1, "imgsz": 64, "batch": 8, "device": "cpu", "patience": 5}


def test_labelled_drops_trigger_a_real_run_recorded_with_metrics(home, monkeypatch):
    monkeypatch.setattr(upkeep, "DATASET_REBUILD_SECONDS", 0.2)
    configure(home, training={**TINY, "min_new_labels": 20, "val_fraction": 0.25})
    with running(home):
        coco_drop(home / "labeled" / "team", labelled_images(0, 24), coco_names())
        engine = home_engine(home)
        try:
            run = wait_for(lambda: next((r for r in runs(engine) if r.state in ("done", "failed")), None), 240, 0.5)
        finally:
            engine.dispose()
    assert (run.state, run.trigger, run.error) == ("done", "labels", None)
    assert (run.epoch, run.epochs) == (1, 1) and set(run.losses) == {"train/box_loss", "train/cls_loss",
                                                                      "train/dfl_loss"}
    folder = home / "models" / "v0001"
    for name in ("weights/best.pt", "weights/last.pt", "args.yaml", "results.csv", "manifest.json", "train.log"):
        assert (folder / name).is_file(), name
    assert list(folder.glob("*.png")), "Ultralytics' plots"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["state"] == "champion" and manifest["classes"] == coco_names()
    assert [a["outcome"] for a in manifest["attempts"]] == ["ok"]
    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            mv = s.scalar(select(ModelVersion))
            assert (mv.version, mv.state, mv.task) == ("v0001", "champion", "detect")
            assert set(mv.metrics) >= {"precision", "recall", "map50", "map50_95"}
            per_class = s.scalars(select(ModelMetric.class_name).where(ModelMetric.class_name.is_not(None))).all()
            assert per_class and set(per_class) <= set(coco_names())
    finally:
        engine.dispose()


def tiny_dataset(root: Path, n_train: int = 16, n_val: int = 8) -> dict:
    """A coco24 subset laid out like a managed dataset snapshot."""
    images = labelled_images(0, n_train + n_val)
    for i, image in enumerate(images):
        split = "train" if i < n_train else "val"
        for sub, src in (("images", image), ("labels", COCO_LABELS / f"{image.stem}.txt")):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / sub / split / src.name)
    names = coco_names()
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                                    "names": dict(enumerate(names))}))
    return {"data": str(root / "data.yaml"), "dataset_version_id": None, "fingerprint": "c" * 64, "classes": names}


def serve_until(sup: TrainingSupervisor, engine, run_id: int, done, timeout: float = 150.0, stop: bool = True):
    """Tick until done(summary); then, like a daemon shutting down, stop (or wait for) the training process."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sup.tick(time.monotonic())
            summary = run_summary(engine, run_id)
            if done(summary):
                return summary
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} did not get there in {timeout}s: {run_summary(engine, run_id)}")
    finally:
        sup.shutdown(timeout=60)


def test_a_restart_mid_training_resumes_then_a_worse_candidate_is_refused(engine, cfg, tmp_path):
    data = tiny_dataset(tmp_path / "coco")
    settings = settings_for(cfg.home, **{**TINY, "epochs": 3})

    def supervisor(s=settings):
        return TrainingSupervisor(engine, s, database_url=cfg.database_url, prepare=lambda e, s: data,
                                  poll_seconds=0.2)

    run_id, _ = request_training(engine, "manual")
    # The daemon stops after the first epoch: SIGTERM to the training process.
    serve_until(supervisor(), engine, run_id, lambda r: (r["epoch"] or 0) >= 1 or r["state"] != "running")
    mid = run_summary(engine, run_id)
    assert mid["state"] == "running" and [a["outcome"] for a in mid["attempts"]] == ["interrupted"]
    assert (cfg.home / "models" / "v0001" / "weights" / "last.pt").exists()

    summary = serve_until(supervisor(), engine, run_id, lambda r: r["state"] in ("done", "failed"))  # restarted
    assert (summary["state"], summary["error"], summary["epoch"]) == ("done", None, 3)
    assert [(a["n"], a["outcome"]) for a in summary["attempts"]] == [(1, "interrupted"), (2, "ok")]
    assert summary["attempts"][1]["model"].startswith("resume ")
    with open(cfg.home / "models" / "v0001" / "results.csv") as f:
        assert [int(float(row["epoch"])) for row in csv.DictReader(f)] == [1, 2, 3]
    with session_scope(engine) as s:
        assert s.get(TrainingRun, run_id).resume_path.endswith("v0001/weights/last.pt")

    # A candidate must now beat the champion by 1.0 mAP50-95: impossible, so it is kept as rejected.
    worse = settings_for(cfg.home, **{**TINY, "promote_min_delta": 1.0})
    second, _ = request_training(engine, "manual")
    summary = serve_until(supervisor(worse), engine, second, lambda r: r["state"] in ("done", "failed"))
    assert (summary["state"], summary["model_state"]) == ("done", "rejected")
    assert summary["decision"].startswith("rejected: map50_95 ")
    assert {m["version"]: m["state"] for m in list_models(engine)} == {"v0002": "rejected", "v0001": "champion"}
