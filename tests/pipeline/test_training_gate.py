"""The promotion gate: a better average must not hide a class the new model stopped recognising (issue 16.2)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pipeline.training.registry import Evaluation, decide, list_models, promote_version
from storage.db import session_scope
from storage.tables import ModelMetric, ModelVersion
from storage.tables import ModelConfusion
from pipeline.training.queue import request_training
from pipeline.training.supervisor import TrainingSupervisor
from tests.pipeline.training_fakes import CLASSES, FakeTrainer, fake_prepare, inline_spawn, settings_for

GATE = dict(min_delta=0.0, max_class_drop=0.05, gate_min_images=10)


def train(engine, home, trainer, fingerprint="f" * 64, **settings) -> None:
    request_training(engine, "manual")
    TrainingSupervisor(engine, settings_for(home, **settings), prepare=fake_prepare(CLASSES, fingerprint),
                       spawn=inline_spawn(engine, trainer), poll_seconds=0).tick(0.0)


def states(engine) -> dict[str, str]:
    return {m["version"]: m["state"] for m in list_models(engine)}


def ev(top1: float, **recalls) -> Evaluation:
    """A classify evaluation: class=(recall, images)."""
    return Evaluation({"top1": top1}, [{"class_name": c, "recall": r, "images": n} for c, (r, n) in recalls.items()])


def test_a_better_candidate_that_loses_a_small_class_is_rejected_and_can_be_forced(engine, cfg):
    trainer = FakeTrainer(scores={"v0001": 0.40, "v0002": 0.45},
                          classes={"v0001": {"painting": {"recall": 0.61, "images": 12}},
                                   "v0002": {"painting": {"recall": 0.42, "images": 12}}})
    train(engine, cfg.home, trainer)
    train(engine, cfg.home, trainer)
    assert states(engine) == {"v0002": "rejected", "v0001": "champion"}
    with session_scope(engine) as s:
        decision = s.scalar(select(ModelVersion.decision).where(ModelVersion.version == "v0002"))
    assert decision == ("rejected: painting recall 0.61 -> 0.42 (-0.19, more than training.max_class_drop 0.05); "
                        "overall map50_95 0.4500 vs champion 0.4000 (+0.0500, needs +0)")
    promote_version(engine, "v0002")  # `coverwatch models promote` overrides the gate
    assert states(engine) == {"v0002": "champion", "v0001": "retired"}


def test_the_gate_follows_its_keys(engine, cfg):
    trainer = FakeTrainer(scores={"v0001": 0.40, "v0002": 0.45},
                          classes={"v0001": {"painting": {"recall": 0.61, "images": 12}},
                                   "v0002": {"painting": {"recall": 0.42, "images": 12}}})
    train(engine, cfg.home, trainer)
    train(engine, cfg.home, trainer, max_class_drop=0.2)
    assert states(engine) == {"v0002": "champion", "v0001": "retired"}


@pytest.mark.parametrize("old, new, promoted", [
    (0.61, 0.56, True),  # exactly max_class_drop (0.61 - 0.56 is 0.05000000000000004 in floats): allowed
    (0.61, 0.5599, False),
    (0.61, 0.61, True),
    (0.40, 0.90, True),
])
def test_ties_and_gains(old, new, promoted):
    ok, why = decide("classify", ev(0.8, comic=(0.9, 50), poetry=(new, 10)), ev(0.7, comic=(0.9, 50),
                                                                              poetry=(old, 10)), **GATE)
    assert ok is promoted, why


def test_the_reason_never_shows_a_drop_that_looks_allowed():
    ok, why = decide("classify", ev(0.8, poetry=(0.5599, 10)), ev(0.7, poetry=(0.61, 10)), **GATE)
    assert not ok and "poetry recall 0.6100 -> 0.5599 (-0.0501, more than training.max_class_drop 0.05)" in why


def test_classes_under_gate_min_images_are_not_gated():
    candidate, champion = ev(0.8, comic=(0.9, 50), poetry=(0.1, 9)), ev(0.7, comic=(0.9, 50), poetry=(0.9, 9))
    assert decide("classify", candidate, champion, **GATE)[0]
    assert not decide("classify", candidate, champion, **{**GATE, "gate_min_images": 9})[0]


def test_a_class_missing_in_the_champion_is_not_gated():
    ok, why = decide("classify", ev(0.8, comic=(0.9, 50), poetry=(0.1, 40)), ev(0.7, comic=(0.9, 50)), **GATE)
    assert ok and why == "promoted: top1 0.8000 vs champion 0.7000 (+0.1000, needs +0)"


def test_a_worse_average_and_a_lost_class_give_both_reasons():
    ok, why = decide("classify", ev(0.6, comic=(0.5, 50)), ev(0.7, comic=(0.9, 50)), **GATE)
    assert not ok
    assert why == ("rejected: top1 0.6000 vs champion 0.7000 (-0.1000, needs +0); "
                   "comic recall 0.90 -> 0.50 (-0.40, more than training.max_class_drop 0.05)")


def test_no_comparable_champion_is_not_gated():
    assert decide("classify", ev(0.1, comic=(0.0, 50)), None, **GATE) == (True, "no comparable champion; top1 0.1000")


def test_per_class_figures_and_the_confusion_matrix_are_stored_and_listed(engine, cfg):
    matrix = {"classes": CLASSES, "matrix": [[3, 0, 0], [1, 2, 0], [0, 0, 3]]}
    trainer = FakeTrainer(confusion={"v0001": matrix},
                          calibration={"v0001": {"temperature": 1.7, "ece_before": 0.2, "ece_after": 0.04}},
                          classes={"v0001": {"comic": {"precision": 0.75, "recall": 1.0, "images": 3}}})
    train(engine, cfg.home, trainer)
    with session_scope(engine) as s:
        rows = s.execute(select(ModelMetric.class_name, ModelMetric.images, ModelMetric.precision,
                                ModelMetric.recall).where(ModelMetric.class_name == "comic")).all()
        stored = s.scalars(select(ModelConfusion)).one()
        mv = s.scalars(select(ModelVersion)).one()
        assert (stored.classes, stored.matrix) == (matrix["classes"], matrix["matrix"])
        assert (mv.temperature, mv.ece_before, mv.ece_after) == (1.7, 0.2, 0.04)
    assert rows == [("comic", 3, 0.75, 1.0)]
    (listed,) = list_models(engine)
    assert listed["confusion"] == matrix
    assert (listed["temperature"], listed["ece_before"], listed["ece_after"]) == (1.7, 0.2, 0.04)
    assert [c["class_name"] for c in listed["per_class"]] == CLASSES
    # the classifier's loader reads T from the manifest the run wrote beside the weights
    from pipeline.inference.model_loader import manifest_temperature

    assert manifest_temperature(cfg.home / "models" / "v0001" / "weights" / "best.pt") == 1.7
    assert listed["per_class"][0] == {"class_name": "comic", "images": 3, "instances": 4, "precision": 0.75,
                                      "recall": 1.0, "map50": 0.6, "map50_95": 0.5}


def test_listed_figures_are_a_champions_latest_evaluation(engine, cfg):
    trainer = FakeTrainer(scores={"v0001": 0.40, "v0002": 0.30},
                          classes={"v0001": {"comic": {"recall": 0.9}}})
    train(engine, cfg.home, trainer)
    trainer.classes = {"v0001": {"comic": {"recall": 0.7}}}  # the same model on a new split
    train(engine, cfg.home, trainer, fingerprint="e" * 64)
    champion = next(m for m in list_models(engine) if m["version"] == "v0001")
    assert champion["per_class"][0]["recall"] == 0.7


def test_a_run_interrupted_before_the_gate_existed_resumes_with_the_configs_gate(engine, cfg):
    from pipeline.training.queue import run_summary
    from storage.tables import TrainingRun

    settings = settings_for(cfg.home)
    old = {k: v for k, v in {**settings.as_params(), **fake_prepare()(engine, settings)}.items()
           if k not in ("max_class_drop", "gate_min_images")}
    with session_scope(engine) as s:  # what the version before this one left running when it was restarted
        run = TrainingRun(state="running", trigger="manual", params=old, version="v0001", epochs=2)
        s.add(run)
        s.flush()
        run_id = run.id
    TrainingSupervisor(engine, settings, prepare=fake_prepare(), spawn=inline_spawn(engine, FakeTrainer()),
                       poll_seconds=0).tick(0.0)
    summary = run_summary(engine, run_id)
    assert (summary["state"], summary["error"], summary["model_state"]) == ("done", None, "champion")
    with session_scope(engine) as s:
        assert s.get(TrainingRun, run_id).params["max_class_drop"] == 0.05
