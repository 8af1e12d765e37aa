"""The registry: promotion only when better on the same split, rollback, hot-swap source, re-classification."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from pipeline.errors import TrainingError
from pipeline.inference.reclassify import reclassify_recent
from pipeline.training.registry import champion_weights, list_models, promote_version, rollback
from pipeline.inference.steps import Result, Step
from pipeline.training.queue import request_training
from pipeline.training.supervisor import TrainingSupervisor
from storage.db import session_scope
from storage.tables import File, ModelMetric, ModelVersion, Prediction
from tests.pipeline.training_fakes import CLASSES, FakeTrainer, fake_prepare, inline_spawn, runs, settings_for


def train(engine, home, trainer, classes=CLASSES, **settings) -> None:
    request_training(engine, "manual")
    TrainingSupervisor(engine, settings_for(home, **settings), prepare=fake_prepare(classes),
                       spawn=inline_spawn(engine, trainer), poll_seconds=0).tick(0.0)


def states(engine) -> dict[str, str]:
    return {m["version"]: m["state"] for m in list_models(engine)}


def test_the_first_model_is_promoted_and_becomes_the_classifiers_source(engine, cfg):
    train(engine, cfg.home, FakeTrainer())
    assert states(engine) == {"v0001": "champion"}
    assert champion_weights(engine, cfg.home) == ("v0001", cfg.home / "models" / "v0001" / "weights" / "best.pt")
    with session_scope(engine) as s:
        rows = s.execute(select(ModelMetric.class_name, ModelMetric.map50_95)).all()
    assert sorted(rows, key=str) == sorted([(None, 0.5), *[(c, 0.5) for c in CLASSES]], key=str)


def test_a_better_candidate_is_promoted_on_the_same_split(engine, cfg):
    trainer = FakeTrainer(scores={"v0001": 0.40, "v0002": 0.45})
    train(engine, cfg.home, trainer)
    train(engine, cfg.home, trainer, promote_min_delta=0.02)
    assert states(engine) == {"v0002": "champion", "v0001": "retired"}
    # both evaluated on the current split: the candidate, then the champion
    assert [p.parent.parent.name for p in trainer.evaluated] == ["v0001", "v0002", "v0001"]
    # the second run started from the champion's weights (same classes)
    assert trainer.calls[1].model.endswith("models/v0001/weights/best.pt")
    with session_scope(engine) as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.version == "v0002"))
        assert mv.decision == "promoted: map50_95 0.4500 vs champion 0.4000 (+0.0500, needs +0.02)"
        champ_rows = s.scalars(select(ModelMetric).where(ModelMetric.model_version_id == 1,
                                                         ModelMetric.class_name.is_(None))).all()
        assert [r.map50_95 for r in champ_rows] == [0.40, 0.40]  # its own run, then re-evaluated


@pytest.mark.parametrize("new, delta", [(0.30, 0.0), (0.40, 0.0), (0.42, 0.05)])
def test_a_candidate_that_is_not_better_enough_is_kept_as_rejected(engine, cfg, new, delta):
    trainer = FakeTrainer(scores={"v0001": 0.40, "v0002": new})
    train(engine, cfg.home, trainer)
    train(engine, cfg.home, trainer, promote_min_delta=delta)
    assert states(engine) == {"v0002": "rejected", "v0001": "champion"}
    run = runs(engine)[1]
    assert run.state == "done" and run.metrics["map50_95"] == new
    with session_scope(engine) as s:
        assert s.scalar(select(ModelVersion.decision).where(ModelVersion.version == "v0002")).startswith(
            f"rejected: map50_95 {new:.4f} vs champion 0.4000")


def test_a_new_class_list_starts_from_base_and_is_not_compared(engine, cfg):
    trainer = FakeTrainer(scores={"v0001": 0.40, "v0002": 0.10})
    train(engine, cfg.home, trainer)
    train(engine, cfg.home, trainer, classes=[*CLASSES, "poetry"], base="yolo11s.yaml")
    assert trainer.calls[1].model == "yolo11s.yaml"
    assert states(engine) == {"v0002": "champion", "v0001": "retired"}


def test_rollback_goes_back_one_champion_at_a_time(engine, cfg):
    trainer = FakeTrainer(scores={"v0001": 0.1, "v0002": 0.2, "v0003": 0.3})
    for _ in range(3):
        train(engine, cfg.home, trainer)
    assert rollback(engine) == ("v0003", "v0002")
    assert champion_weights(engine, cfg.home)[0] == "v0002"
    assert rollback(engine) == ("v0002", "v0001")
    with pytest.raises(TrainingError, match="only model that was ever champion"):
        rollback(engine)
    assert states(engine) == {"v0003": "rolled_back", "v0002": "rolled_back", "v0001": "champion"}
    promote_version(engine, "v0003")
    assert states(engine) == {"v0003": "champion", "v0002": "rolled_back", "v0001": "retired"}
    with pytest.raises(TrainingError, match="no model version 'v0009'"):
        promote_version(engine, "v0009")


class Reclassifier(Step):
    def __init__(self, version):
        self.version, self.seen = version, []

    def __call__(self, items):
        self.seen += [i.file_id for i in items]
        return [Result(predicted_class="comic", confidence=0.9, model_version=self.version,
                       detections=[("comic", 0.9, 0.1, 0.1, 0.5, 0.5)]) for _ in items]


def test_a_promotion_reclassifies_recent_archived_images_keeping_the_old_results(engine, cfg):
    train(engine, cfg.home, FakeTrainer())
    now = datetime.now(timezone.utc)
    with session_scope(engine) as s:
        for i, age in enumerate([1, 2, 30]):
            f = File(folder="inbox", source_path=f"{i}.jpg", original_name=f"{i}.jpg", size=1, sha256=str(i),
                     state="processed", final_path=f"archive/{i}.jpg", processed_at=now - timedelta(days=age))
            s.add(f)
            s.flush()
            s.add(Prediction(file_id=f.id, model_version="yolo11n@old", predicted_class="poetry"))
        s.scalar(select(ModelVersion)).promoted_at = now
    step = Reclassifier("v0001")
    assert reclassify_recent(engine, cfg.home, step, days=7) == 2
    assert reclassify_recent(engine, cfg.home, step, days=7) == 0  # never twice
    with session_scope(engine) as s:
        preds = s.execute(select(Prediction.file_id, Prediction.model_version).order_by(Prediction.id)).all()
    assert preds == [(1, "yolo11n@old"), (2, "yolo11n@old"), (3, "yolo11n@old"), (1, "v0001"), (2, "v0001")]


def test_a_step_not_on_the_new_model_yet_is_not_recorded(engine, cfg):
    train(engine, cfg.home, FakeTrainer())
    with session_scope(engine) as s:
        s.add(File(folder="inbox", source_path="a.jpg", original_name="a.jpg", size=1, sha256="a",
                   state="processed", final_path="archive/a.jpg", processed_at=datetime.now(timezone.utc)))
        s.scalar(select(ModelVersion)).promoted_at = datetime.now(timezone.utc) + timedelta(seconds=5)
    skip: set = set()
    assert reclassify_recent(engine, cfg.home, Reclassifier("other"), days=1, skip=skip) == 0
    assert skip == {1}
    with session_scope(engine) as s:
        assert s.scalar(select(Prediction)) is None
