"""The training queue: triggers, merging, one run at a time, crashes, interruption and resume."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pipeline.training.job import run_job
from pipeline.training.queue import due_trigger, request_training
from pipeline.training.supervisor import EXIT_INTERRUPTED, TrainingSupervisor
from storage.db import make_engine, session_scope
from storage.queries import status_summary
from storage.tables import ModelVersion, TrainingRun
from tests.pipeline.training_fakes import (
    FakeTrainer,
    InlineJob,
    add_samples,
    fake_prepare,
    inline_spawn,
    runs,
    settings_for,
)


def supervisor(engine, home, trainer=None, **settings) -> TrainingSupervisor:
    return TrainingSupervisor(engine, settings_for(home, **settings), prepare=fake_prepare(),
                              spawn=inline_spawn(engine, trainer or FakeTrainer()), poll_seconds=0)


def test_requests_merge_into_the_queued_run(engine):
    assert request_training(engine, "labels") == (1, False)
    assert request_training(engine, "manual") == (1, True)
    assert request_training(engine, "manual") == (1, True)
    assert [(r.id, r.state, r.trigger) for r in runs(engine)] == [(1, "queued", "labels+manual")]


def test_the_queue_survives_a_restart_and_the_database_refuses_a_second_queued_run(engine, cfg):
    request_training(engine, "manual")
    again = make_engine(cfg.database_url)  # a restarted daemon
    try:
        assert request_training(again, "labels") == (1, True)
        with pytest.raises(IntegrityError):
            with session_scope(again) as s:
                s.add(TrainingRun(state="queued", trigger="manual"))
    finally:
        again.dispose()
    assert len(runs(engine)) == 1


def test_new_labels_trigger_a_run_once_there_are_enough(engine, cfg):
    settings = settings_for(cfg.home, min_new_labels=5)
    now = datetime.now().astimezone()
    add_samples(engine, 4)
    with session_scope(engine) as s:
        assert due_trigger(s, settings, now) is None
    add_samples(engine, 1, tag="more")
    with session_scope(engine) as s:
        assert due_trigger(s, settings, now) == "labels"


def test_labels_count_from_the_last_run(engine, cfg):
    add_samples(engine, 6)
    sup = supervisor(engine, cfg.home, min_new_labels=5)
    sup.tick(0.0)
    assert [(r.trigger, r.state) for r in runs(engine)] == [("labels", "done")]
    sup.tick(1.0)
    assert len(runs(engine)) == 1  # the same labels do not trigger twice
    add_samples(engine, 5, tag="new")
    sup.tick(2.0)
    assert [(r.trigger, r.state) for r in runs(engine)] == [("labels", "done"), ("labels", "done")]


def test_the_daily_time_triggers_once_a_day_when_labels_changed(engine, cfg):
    settings = settings_for(cfg.home, min_new_labels=100, at="02:00")
    # Yesterday's clock: the samples below are stamped with the real time, which must come after every time
    # the test asks about (a test run between 00:00 and 05:00 once failed with "today").
    today = (datetime.now().astimezone() - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with session_scope(engine) as s:
        assert due_trigger(s, settings, today + timedelta(hours=3)) is None  # nothing changed
    add_samples(engine, 1)
    with session_scope(engine) as s:
        assert due_trigger(s, settings, today + timedelta(hours=1)) is None  # not yet 02:00
        assert due_trigger(s, settings, today + timedelta(hours=3)) == "schedule"
    request_training(engine, "schedule", now=today + timedelta(hours=3))
    with session_scope(engine) as s:
        s.get(TrainingRun, 1).state = "done"
    add_samples(engine, 1, tag="later")
    with session_scope(engine) as s:
        assert due_trigger(s, settings, today + timedelta(hours=5)) is None  # once a day
        assert due_trigger(s, settings, today + timedelta(days=1, hours=3)) == "schedule"


def test_a_run_is_recorded_with_progress_metrics_and_a_version_folder(engine, cfg):
    request_training(engine, "manual")
    supervisor(engine, cfg.home).tick(0.0)

    [run] = runs(engine)
    assert (run.state, run.version, run.epoch, run.epochs, run.losses) == (
        "done", "v0001", 2, 2, {"train/box_loss": 0.5})
    assert run.metrics["map50_95"] == 0.5
    folder = cfg.home / "models" / "v0001"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dataset"]["fingerprint"] == "f" * 64
    assert manifest["classes"] == ["comic", "fairy_tale", "painting"]
    assert manifest["state"] == "champion" and manifest["start"] == "training.base"
    assert [a["outcome"] for a in manifest["attempts"]] == ["ok"]
    assert manifest["metrics"]["overall"]["map50_95"] == 0.5
    with session_scope(engine) as s:
        assert status_summary(s)["champion"] == "v0001"


def test_one_run_at_a_time(engine, cfg):
    class Running(InlineJob):
        def __init__(self):
            super().__init__(None)

    started = []
    sup = TrainingSupervisor(engine, settings_for(cfg.home), prepare=fake_prepare(), poll_seconds=0,
                             spawn=lambda rid, log: started.append(rid) or Running())
    request_training(engine, "manual")
    sup.tick(0.0)
    request_training(engine, "manual")  # queued behind the running one
    sup.tick(1.0)
    assert started == [1]
    assert [(r.id, r.state) for r in runs(engine)] == [(1, "running"), (2, "queued")]
    with session_scope(engine) as s:
        t = status_summary(s)["training"]
    assert (t["state"], t["version"]) == ("running", "v0001")


def test_a_crashed_training_process_fails_the_run_and_the_next_one_starts(engine, cfg):
    calls = []

    def spawn(run_id, log):
        calls.append(run_id)
        return InlineJob(-9) if run_id == 1 else InlineJob(run_job(engine, run_id, trainer=FakeTrainer()))

    sup = TrainingSupervisor(engine, settings_for(cfg.home), prepare=fake_prepare(), spawn=spawn, poll_seconds=0)
    request_training(engine, "manual")
    sup.tick(0.0)
    request_training(engine, "manual")
    sup.tick(1.0)  # sees run 1 dead, records it, starts run 2
    sup.tick(2.0)
    r1, r2 = runs(engine)
    assert (r1.state, r1.error) == ("failed", "the training process ended with signal 9 without recording a result")
    assert r2.state == "done"


def test_no_dataset_fails_the_run_with_its_reason(engine, cfg):
    sup = TrainingSupervisor(engine, settings_for(cfg.home), spawn=inline_spawn(engine, FakeTrainer()),
                             poll_seconds=0)
    request_training(engine, "manual")
    sup.tick(0.0)
    [run] = runs(engine)
    assert run.state == "failed"
    assert "no dataset yet" in run.error


def test_an_interrupted_run_resumes_from_last_pt_after_a_restart(engine, cfg):
    stop = threading.Event()
    seen = []

    class StopsAfterOneEpoch(FakeTrainer):
        def train(self, spec, **kw):
            on_epoch = kw.pop("on_epoch")

            def epoch(p):
                seen.append(p["epoch"])
                on_epoch(p)
                stop.set()  # SIGTERM arrives during the first epoch

            return super().train(spec, on_epoch=epoch, **kw)

    trainer = StopsAfterOneEpoch()
    first = supervisor(engine, cfg.home, epochs=3)
    first.spawn = lambda rid, log: InlineJob(run_job(engine, rid, trainer=trainer, stop=stop))
    request_training(engine, "manual")
    first.tick(0.0)
    first.shutdown()
    [run] = runs(engine)
    assert (run.state, run.epoch, [a.outcome for a in run.attempts]) == ("running", 1, ["interrupted"])
    assert (cfg.home / "models" / "v0001" / "weights" / "last.pt").read_text() == "1"

    resumed = FakeTrainer()
    supervisor(engine, cfg.home, resumed, epochs=3).tick(10.0)  # the next start
    [run] = runs(engine)
    assert run.state == "done" and run.epoch == 3
    assert [(a.n, a.resume, a.outcome) for a in run.attempts] == [(1, False, "interrupted"), (2, True, "ok")]
    assert resumed.calls[0].resume and resumed.calls[0].model.endswith("v0001/weights/last.pt")
    assert run.resume_path.endswith("last.pt")


def test_run_job_reports_an_interruption_with_its_exit_code(engine, cfg):
    stop = threading.Event()
    stop.set()
    sup = supervisor(engine, cfg.home)
    sup.spawn = lambda rid, log: InlineJob(run_job(engine, rid, trainer=FakeTrainer(), stop=stop))
    request_training(engine, "manual")
    sup.tick(0.0)
    assert sup.proc.poll() == EXIT_INTERRUPTED
    with session_scope(engine) as s:
        assert s.scalar(select(ModelVersion)) is None


def test_a_run_whose_process_is_still_alive_is_not_started_twice(engine, cfg, procs):
    import sys

    # A training job left running by a daemon that was killed: its command line names pipeline.training.job.
    job = procs.popen([sys.executable, "-c", "import time; time.sleep(60)", "pipeline.training.job"])
    try:
        request_training(engine, "manual")
        with session_scope(engine) as s:
            run = s.get(TrainingRun, 1)
            run.state, run.version, run.pid, run.params = "running", "v0001", job.pid, None
        started = []
        sup = supervisor(engine, cfg.home)
        inner = sup.spawn
        sup.spawn = lambda rid, log: started.append(rid) or inner(rid, log)
        sup.tick(0.0)
        assert started == []
    finally:
        job.kill()
        job.wait()
    sup.tick(1.0)
    assert started == [1]
    assert [(r.state, r.version) for r in runs(engine)] == [("done", "v0001")]


# -- a failed run is visible: the log, status, the model list -----------------------------------------------


def test_a_run_that_fails_in_training_is_logged_once_with_its_cause(engine, cfg, caplog):
    trainer = FakeTrainer(fail=TypeError("cross_entropy_loss(): argument 'input' must be Tensor, not dict"))
    sup = supervisor(engine, cfg.home, trainer)
    request_training(engine, "manual")
    with caplog.at_level("INFO", logger="pipeline.training.supervisor"):
        sup.tick(0.0)  # the inline job has already failed when it is "started"
        sup.tick(1.0)  # the supervisor sees it ended
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.training.supervisor"]
    assert lines == ["training run 1 started as v0001",
                     "training run 1 (v0001) failed: TypeError: cross_entropy_loss(): argument 'input' must be "
                     "Tensor, not dict; see models/v0001/train.log"]
    assert [r.levelname for r in caplog.records if r.name == "pipeline.training.supervisor"] == ["INFO", "ERROR"]


def test_a_run_that_cannot_prepare_its_dataset_is_logged_with_its_cause(engine, cfg, caplog):
    sup = TrainingSupervisor(engine, settings_for(cfg.home), spawn=inline_spawn(engine, FakeTrainer()),
                             poll_seconds=0)
    request_training(engine, "manual")
    with caplog.at_level("INFO", logger="pipeline.training.supervisor"):
        sup.tick(0.0)
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.training.supervisor"] == [
        "training run 1 (v0001) failed: cannot prepare the dataset: no dataset yet: drop labelled images into "
        "labeled/"]


def test_a_finished_run_is_logged_with_its_outcome(engine, cfg, caplog):
    sup = supervisor(engine, cfg.home)
    request_training(engine, "manual")
    with caplog.at_level("INFO", logger="pipeline.training.supervisor"):
        sup.tick(0.0)
        sup.tick(1.0)
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.training.supervisor"][-1] == (
        "training run 1 (v0001) done: champion (no comparable champion; map50_95 0.5000)")


def test_status_shows_the_last_finished_run_failed_or_done(engine, cfg):
    with session_scope(engine) as s:
        assert status_summary(s)["last_training"] is None
    trainer = FakeTrainer(fail=TypeError("boom\nsecond line"))
    request_training(engine, "manual")
    supervisor(engine, cfg.home, trainer).tick(0.0)
    with session_scope(engine) as s:
        last = status_summary(s)["last_training"]
    assert {k: last[k] for k in ("run", "version", "state", "error", "model_state", "decision")} == {
        "run": 1, "version": "v0001", "state": "failed", "error": "TypeError: boom", "model_state": None,
        "decision": None}
    assert datetime.fromisoformat(last["finished_at"]).tzinfo is not None

    request_training(engine, "manual")
    supervisor(engine, cfg.home).tick(0.0)
    request_training(engine, "manual")  # queued: not finished, so not the last one
    with session_scope(engine) as s:
        summary = status_summary(s)
    last = summary["last_training"]
    assert (last["run"], last["version"], last["state"], last["error"], last["model_state"]) == (
        2, "v0002", "done", None, "champion")
    assert last["decision"].startswith("no comparable champion")
    assert summary["training"]["state"] == "queued"


def test_the_model_list_shows_failed_runs_with_their_error(engine, cfg):
    from pipeline.training.registry import list_models

    request_training(engine, "manual")
    supervisor(engine, cfg.home).tick(0.0)
    request_training(engine, "manual")
    supervisor(engine, cfg.home, FakeTrainer(fail=RuntimeError("CUDA error: device-side assert\nmore"))).tick(0.0)
    rows = list_models(engine)
    assert [(m["version"], m["state"], m["error"]) for m in rows] == [
        ("v0002", "failed", "RuntimeError: CUDA error: device-side assert"), ("v0001", "champion", None)]
    assert rows[0]["run"] == 2 and rows[0]["score"] is None


@pytest.mark.parametrize("given, resolved", [
    ("cpu", "cpu"), ("0", "cuda:0"), (0, "cuda:0"), (1, "cuda:1"), ("cuda", "cuda:0"), ("CUDA:1", "cuda:1"),
    ("0,1", "0,1"), ([0, 1], [0, 1])])
def test_one_device_form_serves_torch_and_ultralytics(given, resolved):
    """training.device and model.device resolve alike; Ultralytics' train and val read the result as they read
    what the user wrote, and torch takes it for inference (a single device)."""
    import torch
    from ultralytics.utils.torch_utils import parse_device

    from pipeline.inference.device import resolve_device

    assert resolve_device(given) == resolved
    assert parse_device(resolved) == parse_device(given)
    if not isinstance(resolved, list) and "," not in resolved:
        assert torch.device(resolved).type in ("cpu", "cuda")


def test_auto_is_the_gpu_when_torch_sees_one(monkeypatch):
    import torch

    from pipeline.inference.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda:0"


def test_shutdown_with_the_database_locked_still_stops_the_run(engine, cfg, procs, monkeypatch):
    """SIGTERM to the daemon while another worker holds the database: the run is told to stop anyway (it
    resumes from last.pt), and the daemon's shutdown does not fail on the lock (a survivor of the three-worker
    test ended with exit code 1)."""
    import sys

    from sqlalchemy.exc import OperationalError

    import pipeline.training.supervisor as supervisor_module

    job = procs.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sup = supervisor(engine, cfg.home)
    sup.proc, sup.run_id = job, 1

    def locked(_engine):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(supervisor_module, "session_scope", locked)
    sup.shutdown(timeout=10)
    assert job.poll() is not None and sup.proc is None
