"""The label audit: folds that never share an image, the job on a scripted trainer (findings, review copies,
stop and resume, out-of-memory), and cleanlab's findings on planted errors."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from pipeline.labels.folds import AuditItem, assign_folds
from pipeline.labels.health import assess_health, recommendation
from pipeline.training.job import run_job
from pipeline.training.queue import request_training, run_summary
from pipeline.training.supervisor import EXIT_INTERRUPTED, TrainingSupervisor, spawn_job
from storage.db import session_scope
from storage.queries import status_summary
from storage.tables import AuditImage, ClassOverlap, LabelAudit, TrainingRun
from tests.pipeline.audit_fakes import CLASSES, ColourTrainer, make_snapshot, snapshot_prepare
from tests.pipeline.training_fakes import InlineJob, out_of_memory, runs, settings_for

# 10 images of each colour; two are labelled with another class than their colour says.
FLIPPED = {3: "fairy_tale", 16: "painting"}  # a comic called fairy_tale, a fairy_tale called painting


def _images() -> list[tuple[str, str]]:
    out = []
    for n in range(30):
        colour = CLASSES[n % 3]
        out.append((colour, FLIPPED.get(n, colour)))
    return out


def _supervisor(engine, home, data, trainer, **settings) -> TrainingSupervisor:
    settings = {"task": "classify", **settings}
    task = settings.pop("task")
    sup = TrainingSupervisor(engine, _settings(home, task, **settings), prepare=snapshot_prepare(data),
                             spawn=lambda rid, log: InlineJob(run_job(engine, rid, trainer=trainer,
                                                                      stop=settings.get("stop"))),
                             poll_seconds=0)
    return sup


def _settings(home, task, **kw):
    from watcher.config import Config, training_settings

    kw.pop("stop", None)
    values = dict(epochs=2, imgsz=32, batch=16, min_new_labels=10_000, audit_epochs=2)
    values.update(kw)
    return training_settings(Config(home=home, task=task, training=values), workers=0)


# -- folds ----------------------------------------------------------------------------------------------------


def _item(sha: str, cls: int) -> AuditItem:
    return AuditItem(sha, Path(f"{sha}.jpg"), f"{cls} 0.5 0.5 1 1\n", cls)


def test_every_image_is_in_exactly_one_fold_and_one_content_never_in_two():
    items = [_item(f"sha{n % 40}", n % 3) for n in range(60)]  # 20 contents dropped twice
    folds = assign_folds(items, 3)
    assert len(folds) == len(items) and set(folds) == {0, 1, 2}
    by_content: dict[str, set[int]] = {}
    for item, fold in zip(items, folds):
        by_content.setdefault(item.sha256, set()).add(fold)
    assert all(len(f) == 1 for f in by_content.values())
    per_fold = [folds.count(k) for k in range(3)]
    assert max(per_fold) - min(per_fold) <= 2  # balanced
    for cls in range(3):  # and every fold sees every class
        assert {f for i, f in zip(items, folds) if i.class_id == cls} == {0, 1, 2}
    assert assign_folds(items, 3) == folds  # stable


def test_a_group_key_keeps_a_group_in_one_fold():
    items = [_item(f"sha{n}", n % 2) for n in range(20)]
    group = {f"sha{n}": f"g{n // 4}" for n in range(20)}  # near-duplicate groups of four
    folds = assign_folds(items, 4, group_key=lambda i: group[i.sha256])
    for g in set(group.values()):
        assert len({f for i, f in zip(items, folds) if group[i.sha256] == g}) == 1


def test_near_duplicates_are_held_out_in_one_fold(engine):
    """One cover photographed twice (a few bits of pHash apart) is one group, as in the dataset's split."""
    from pipeline.images.phash import to_db
    from pipeline.training.audit import _near_anchors
    from storage.tables import File

    h = 0x0123456789ABCDEF
    hashes = {"a" * 64: h, "b" * 64: h ^ 0b1100, "c" * 64: h ^ (2**64 - 1), "d" * 64: None}
    with session_scope(engine) as s:
        s.add_all([File(folder="labeled", source_path=f"{n}.jpg", original_name=f"{n}.jpg", size=1, sha256=sha,
                        phash=None if ph is None else to_db(ph)) for n, (sha, ph) in enumerate(hashes.items())])
    items = [AuditItem(sha, Path(f"{sha[0]}.jpg"), f"{n % 2}\n", n % 2) for n, sha in enumerate(hashes)]
    anchors = _near_anchors(engine, items, 6)
    assert anchors["a" * 64] == anchors["b" * 64] == "a" * 64
    assert len({anchors.get(sha, sha) for sha in hashes}) == 3  # c is far, d has no hash
    folds = assign_folds(items, 2, group_key=lambda i: anchors.get(i.sha256, i.sha256))
    assert folds[0] == folds[1]
    assert _near_anchors(engine, items, 0) == {}  # watch.near_duplicate_bits 0: content only


def test_fewer_than_two_folds_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds([_item("a", 0)], 1)


# -- cleanlab's findings ----------------------------------------------------------------------------------------


def test_planted_flips_are_flagged_and_a_merged_class_pair_ranks_first():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2, 3], 30)
    given = truth.copy()
    given[[5, 40, 70]] = [1, 2, 0]  # three flips
    probs = np.full((120, 4), 0.02)
    probs[np.arange(120), truth] = 0.94
    mixed = truth >= 2  # classes 2 and 3 are one class under two names: the model splits them at random
    split = rng.uniform(0.25, 0.75, mixed.sum())
    probs[mixed, 2], probs[mixed, 3] = 0.94 * split, 0.94 * (1 - split)
    probs /= probs.sum(1, keepdims=True)
    h = assess_health(given=given, probs=probs, classes=["a", "b", "c", "d"])
    flagged = {i.index for i in h.flagged}
    assert {5, 40} <= flagged
    assert (h.pairs[0].class_a, h.pairs[0].class_b) == ("c", "d")
    assert h.pairs[0].recommendation.startswith("merge")
    assert 0 < h.score < 1 and [r["class"] for r in h.ranking][:2] in (["c", "d"], ["d", "c"])
    assert sum(map(sum, h.confusion)) == 120


@pytest.mark.parametrize("share, words", [(0.5, "merge"), (0.3, "merge"), (0.2, "define them more sharply"),
                                          (0.1, "define them more sharply"), (0.05, "allow both")])
def test_the_recommendation_follows_the_share_of_the_pair(share, words):
    assert recommendation(share).startswith(words)


def test_one_class_alone_cannot_be_audited():
    with pytest.raises(ValueError, match="two classes"):
        assess_health(given=[0, 0, 0], probs=[[0.9, 0.1]] * 3, classes=["a", "b"])


# -- the job ----------------------------------------------------------------------------------------------------


def test_an_audit_gives_every_image_a_prediction_from_a_fold_that_did_not_see_it(engine, cfg):
    data = make_snapshot(engine, cfg.home, _images())
    trainer = ColourTrainer()
    sup = _supervisor(engine, cfg.home, data, trainer)
    run_id, _ = request_training(engine, "manual", kind="audit", folds=3)
    sup.tick(0.0)
    summary = run_summary(engine, run_id)
    assert (summary["state"], summary["version"], summary["folds"], summary["epochs"]) == ("done", "audit-0001", 3, 2)
    # fold k's model trained without fold k's images and predicted exactly them
    for k, predicted in enumerate(trainer.predicted):
        train = {p.name for p in (cfg.home / "models" / "audit-0001" / f"fold{k + 1}" / "data" / "images" / "train")
                 .iterdir()}
        assert train.isdisjoint(p.name for p in predicted)
    assert sum(len(p) for p in trainer.predicted) == 30
    with session_scope(engine) as s:
        audit = s.scalar(select(LabelAudit))
        rows = s.scalars(select(AuditImage).order_by(AuditImage.id)).all()
        assert (audit.images, audit.folds, len(rows), len({r.image_sha256 for r in rows})) == (30, 3, 30, 30)
        assert (audit.accuracy, audit.majority_share) == (pytest.approx(28 / 30), pytest.approx(11 / 30))
        flagged = {(r.given_class, r.suggested_class) for r in rows if r.flagged}
        assert flagged == {("fairy_tale", "comic"), ("painting", "fairy_tale")}
        assert all(r.file_id is not None for r in rows)
        copies = [r.review_path for r in rows if r.flagged]
        assert audit.review_folder == "review/audit-0001" and all(copies)
    review = cfg.home / "review" / "audit-0001"
    assert (review / "classes.txt").read_text() == "comic\nfairy_tale\npainting\n"
    labels = sorted(p.read_text() for p in review.glob("*.txt") if p.name != "classes.txt")
    assert labels == ["1 0.500000 0.500000 1.000000 1.000000\n", "2 0.500000 0.500000 1.000000 1.000000\n"]


def test_training_with_audit_folds_queues_an_audit_after_each_run(engine, cfg):
    data = make_snapshot(engine, cfg.home, _images())
    sup = _supervisor(engine, cfg.home, data, ColourTrainer(), audit_folds=2)
    request_training(engine, "manual")
    sup.tick(0.0)  # the training run
    sup.tick(1.0)  # the audit it queued
    assert [(r.kind, r.state, r.trigger, r.folds) for r in runs(engine)] == [
        ("train", "done", "manual", None), ("audit", "done", "training", 2)]


def test_a_training_request_never_merges_into_a_queued_audit(engine):
    audit, _ = request_training(engine, "manual", kind="audit")
    train, merged = request_training(engine, "manual")
    assert audit != train and not merged
    assert request_training(engine, "labels") == (train, True)


def test_a_stopped_audit_keeps_its_finished_folds_and_resumes(engine, cfg):
    data = make_snapshot(engine, cfg.home, _images())
    stop = threading.Event()

    class StopsInFoldTwo(ColourTrainer):
        def train(self, spec, **kw):
            if len(self.calls) == 1:
                stop.set()  # SIGTERM during the second fold
            return super().train(spec, **kw)

    first = StopsInFoldTwo()
    sup = _supervisor(engine, cfg.home, data, first, stop=stop)
    sup.spawn = lambda rid, log: InlineJob(run_job(engine, rid, trainer=first, stop=stop))
    run_id, _ = request_training(engine, "manual", kind="audit", folds=3)
    sup.tick(0.0)
    assert sup.proc.poll() == EXIT_INTERRUPTED
    summary = run_summary(engine, run_id)
    assert (summary["state"], summary["fold"]) == ("running", 2)
    assert status_summary_audit(engine) == {"state": "running", "fold": 2, "folds": 3}
    sup.shutdown()
    again = ColourTrainer()
    _supervisor(engine, cfg.home, data, again).tick(10.0)  # the next start
    assert run_summary(engine, run_id)["state"] == "done"
    assert len(again.calls) == 2  # folds 2 and 3; fold 1's predictions were kept
    with session_scope(engine) as s:
        assert len(s.scalars(select(AuditImage)).all()) == 30


def status_summary_audit(engine) -> dict:
    with session_scope(engine) as s:
        a = status_summary(s)["audit"]
    return {k: a[k] for k in ("state", "fold", "folds")}


def test_sigterm_stops_the_audit_process_with_the_resume_code(engine, cfg, procs):
    data = make_snapshot(engine, cfg.home, _images())
    sup = _supervisor(engine, cfg.home, data, ColourTrainer())
    run_id, _ = request_training(engine, "manual", kind="audit", folds=3, epochs=50)
    holder = {}

    def spawn(rid, log_path):
        holder["proc"] = spawn_job(rid, database_url=cfg.database_url, log_path=log_path, cwd=cfg.home,
                                   trainer="tests.pipeline.audit_fakes:slow_trainer")
        return procs.track(holder["proc"])

    sup.spawn = spawn
    sup.tick(0.0)
    deadline = time.monotonic() + 60
    log = cfg.home / "models" / "audit-0001" / "train.log"
    while (run_summary(engine, run_id)["epoch"] or 0) < 1:
        assert time.monotonic() < deadline and holder["proc"].poll() is None, log.read_text()
        time.sleep(0.1)
    holder["proc"].send_signal(signal.SIGTERM)
    assert holder["proc"].wait(30) == EXIT_INTERRUPTED
    summary = run_summary(engine, run_id)
    assert (summary["state"], summary["fold"]) == ("running", 1)
    assert [a["outcome"] for a in summary["attempts"]] == ["interrupted"]


def test_out_of_memory_in_a_fold_steps_down_and_the_next_fold_starts_there(engine, cfg):
    data = make_snapshot(engine, cfg.home, _images())
    trainer = ColourTrainer(oom=lambda spec: spec.batch > 4)
    request_training(engine, "manual", kind="audit", folds=2)
    _supervisor(engine, cfg.home, data, trainer).tick(0.0)
    [run] = runs(engine)
    assert run.state == "done"
    assert [(a.batch, a.outcome) for a in run.attempts] == [(16, "oom"), (8, "oom"), (4, "ok"), (4, "ok")]


def test_an_audit_of_a_detect_home_fails_in_one_line(engine, cfg):
    data = make_snapshot(engine, cfg.home, _images())
    sup = _supervisor(engine, cfg.home, data, ColourTrainer(), task="detect")
    run_id, _ = request_training(engine, "manual", kind="audit")
    sup.tick(0.0)
    summary = run_summary(engine, run_id)
    assert summary["state"] == "failed" and summary["error"].startswith("the label audit covers task: classify only")


def test_too_few_images_for_the_folds_fail_the_audit_with_the_reason(engine, cfg):
    data = make_snapshot(engine, cfg.home, [("comic", "comic"), ("painting", "painting"), ("comic", "comic")])
    sup = _supervisor(engine, cfg.home, data, ColourTrainer())
    run_id, _ = request_training(engine, "manual", kind="audit", folds=3)
    sup.tick(0.0)
    summary = run_summary(engine, run_id)
    assert summary["state"] == "failed"
    assert summary["error"] == "3 labelled images in 2 classes: a 3-fold audit needs two classes and 6 images"


def test_a_foreground_audit_does_not_train_a_model_the_new_labels_asked_for_first(engine, cfg):
    from pipeline.training.supervisor import run_until_done

    data = make_snapshot(engine, cfg.home, _images())
    settings = _settings(cfg.home, "classify", min_new_labels=5)  # the 30 new labels ask for a training run
    run_id, _ = request_training(engine, "manual", kind="audit", folds=2)
    trainer = ColourTrainer()
    out = run_until_done(engine, settings, run_id, database_url="unused", poll_seconds=0,
                         spawn=lambda rid, log: InlineJob(run_job(engine, rid, trainer=trainer)),
                         prepare=snapshot_prepare(data))
    assert out["state"] == "done"
    assert [(r.kind, r.state, r.trigger) for r in runs(engine)] == [("audit", "done", "manual"),
                                                                     ("train", "queued", "labels")]


def test_fold_models_that_learned_nothing_are_called_weak(engine, cfg):
    from pipeline.training.audit_record import audit_outcome

    class Uniform(ColourTrainer):
        def predict_probs(self, weights, images, **kw):
            return [{c: 1 / 3 for c in CLASSES} for _ in images]

    data = make_snapshot(engine, cfg.home, _images())
    run_id, _ = request_training(engine, "manual", kind="audit", folds=2)
    _supervisor(engine, cfg.home, data, Uniform()).tick(0.0)
    out = audit_outcome(engine, run_id)
    assert out["weak"] and out["accuracy"] <= out["majority_share"]
