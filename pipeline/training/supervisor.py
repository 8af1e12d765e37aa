"""Training runs: the process that trains, and the supervisor that starts, polls and stops it.

A run is a `training_runs` row: queued -> running -> done | failed (the queue and its triggers are in
`pipeline.training.queue`). The run itself is `python -m pipeline.training.job` in its own process, so a CUDA crash
there cannot take the daemon down; it writes its progress, attempts and result to the database.
`TrainingSupervisor.tick` starts it, polls it, and marks it failed if it dies without saying why. On shutdown
it is sent SIGTERM; the row stays `running`, and the next start relaunches it, resuming from its `last.pt`.

Example (the daemon does this every couple of seconds):
    >>> sup = TrainingSupervisor(engine, settings)
    >>> sup.tick(time.monotonic())
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError

from pipeline.settings import TrainingSettings
from pipeline.training.queue import due_trigger, request_training, run_summary
from storage.clock import utcnow
from storage.db import session_scope
from storage.tables import ModelVersion, TrainingRun

log = logging.getLogger(__name__)

DB_ENV = "COVERWATCH_TRAIN_DATABASE"  # the URL goes by environment, not argv: `ps` must not show a password
EXIT_INTERRUPTED = 75  # the job stopped on request; resume it


# -- the training process --------------------------------------------------------------------------------


def spawn_job(run_id: int, *, database_url: str, log_path: Path, cwd: Path, trainer: str | None = None):
    """Start `python -m pipeline.training.job` for a run; its output goes to `log_path`."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding pipeline/
    env = {**os.environ, DB_ENV: database_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pipeline.training.job", "--run", str(run_id)]
    if trainer:
        cmd += ["--trainer", trainer]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        # Its own session: a Ctrl-C meant for the daemon's terminal must not kill it mid-write; we stop it.
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


@dataclass
class TrainingSupervisor:
    """Starts queued runs one at a time, polls the process, stops it on shutdown. Not thread-safe: one caller."""

    engine: object
    settings: TrainingSettings
    database_url: str = ""
    spawn: Callable | None = None  # (run_id, log_path) -> a Popen-like handle; tests pass an in-process one
    prepare: Callable | None = None  # (engine, settings) -> dataset params; default: build the managed dataset
    poll_seconds: float = 2.0
    host: str = field(default_factory=socket.gethostname)
    only: int | None = None  # start no queued run but this one (a foreground --wait): the rest is the daemon's
    proc: object = None
    run_id: int | None = None
    _next: float = 0.0
    _skip: set = field(default_factory=set)  # files the re-classification could not do

    def tick(self, now: float, *, step=None, serve: bool = True, wall: datetime | None = None) -> None:
        """At most every `poll_seconds`: (with `reclassify_days` and the classifier `step`) re-classify a few
        recent images with a new champion; then, when `serve`, poll the running job, check the triggers and start
        a queued run."""
        if now < self._next:
            return
        self._next = now + self.poll_seconds
        if step is not None and self.settings.reclassify_days:
            from pipeline.inference.reclassify import reclassify_recent

            reclassify_recent(self.engine, self.settings.home, step, days=self.settings.reclassify_days,
                              skip=self._skip)
        if not serve:
            return
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return
            self._finished(rc)
        wall = wall or datetime.now(timezone.utc)
        with session_scope(self.engine) as s:
            trigger = due_trigger(s, self.settings, wall)
        if trigger:
            request_training(self.engine, trigger, now=wall)
        self._start_next()

    def busy(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self, timeout: float = 5.0) -> None:
        """SIGTERM the job (it stops at the next batch; last.pt holds the last finished epoch), then wait."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            with session_scope(self.engine) as s:
                run = s.get(TrainingRun, self.run_id)
                finished = run is not None and run.state != "running"
        except OperationalError as exc:  # another worker holds the database: stopping it is right either way
            log.warning("could not read training run %s before stopping it (%s)", self.run_id, exc.orig)
            finished = False
        if not finished:  # else it recorded its result and is on its way out: only wait
            log.info("stopping training run %s; it resumes on the next start", self.run_id)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # A finished run's process may still be tearing down its data loaders: nothing is lost by ending it.
            (log.debug if finished else log.warning)("training run %s did not stop within %.0fs; killing it",
                                                    self.run_id, timeout)
            proc.kill()
            proc.wait(timeout)

    # -- helpers -----------------------------------------------------------------------------------------

    def _finished(self, rc: int) -> None:
        """The process ended: say how the run went in one log line (the job itself logs only to train.log)."""
        run_id, self.proc = self.run_id, None
        with session_scope(self.engine, write=True) as s:
            run = s.get(TrainingRun, run_id)
            if run is None:
                return
            if run.state == "running":
                if rc == EXIT_INTERRUPTED:
                    return  # left running on purpose: the next start resumes it
                run.state, run.finished_at, run.pid = "failed", utcnow(), None
                run.error = f"the training process ended with {_exit_text(rc)} without recording a result"
            mv = s.get(ModelVersion, run.model_version_id) if run.model_version_id else None
            state, version, error, kind = run.state, run.version, run.error, run.kind
            outcome = f"{mv.state} ({mv.decision})" if mv is not None else None
            if kind == "audit":
                outcome = ", ".join(f"{k} {v}" for k, v in (run.metrics or {}).items())
        if state == "failed":
            log.error("%s run %d (%s) failed: %s; see %s", _word(kind), run_id, version, _first_line(error),
                      self._shown(self._log_path(version)))
        elif state == "done":
            log.info("%s run %d (%s) done: %s", _word(kind), run_id, version, outcome or "no model recorded")
            if kind == "train":
                self._audit_after_training()

    def _audit_after_training(self) -> None:
        """`training.audit_folds` > 0: every finished training run is followed by an audit of its labels."""
        if not self.settings.audit_folds:
            return
        if self.settings.task != "classify":
            log.info("training.audit_folds is set, but the label audit covers task: classify only; none queued")
            return
        request_training(self.engine, "training", kind="audit", folds=self.settings.audit_folds)

    def _start_next(self) -> None:
        run_id = self._claim()
        if run_id is None:
            return
        try:
            with session_scope(self.engine) as s:
                prepared = _keep_params(s.get(TrainingRun, run_id), self.settings)
            params = None if prepared else {**self.settings.as_params(), **self._prepare()}
            # Written after the build: its own transactions come first.
            with session_scope(self.engine, write=True) as s:
                run = s.get(TrainingRun, run_id)
                if params is not None:
                    run.params, run.dataset_version_id = params, params.get("dataset_version_id")
                    run.epochs = self.settings.epochs if run.kind == "train" else \
                        run.epochs or self.settings.audit_epochs  # `coverwatch audit --epochs` set it
                version, kind = run.version, run.kind
        except Exception as exc:  # noqa: BLE001 - no dataset, a build error: this run fails, the daemon goes on
            self._fail(run_id, f"cannot prepare the dataset: {exc}")
            return
        spawn = self.spawn or self._spawn_process
        try:
            self.proc, self.run_id = spawn(run_id, self._log_path(version)), run_id
        except OSError as exc:
            self._fail(run_id, f"cannot start the training process: {exc}")
            return
        with session_scope(self.engine, write=True) as s:
            s.get(TrainingRun, run_id).pid = getattr(self.proc, "pid", None)
        log.info("%s run %d started as %s", _word(kind), run_id, version)

    def _claim(self) -> int | None:
        """A run of ours interrupted by a restart (to resume), else the queued one (training before an audit);
        None when busy or idle."""
        from pipeline.training.registry import version_name

        with session_scope(self.engine, write=True) as s:
            running = list(s.scalars(select(TrainingRun).where(TrainingRun.state == "running")
                                     .order_by(TrainingRun.id)))
            for run in running:
                if run.host not in (None, self.host) or _alive(run.pid):
                    continue  # another host's run, or a job still alive from before a restart
                log.info("resuming %s run %d, interrupted by a restart", _word(run.kind), run.id)
                run.pid = os.getpid()  # ours from now on: nobody else resumes it while we prepare
                return run.id
            if running:
                return None  # one process at a time on a host: the other kind waits for it
            wanted = TrainingRun.state == "queued" if self.only is None else TrainingRun.id == self.only
            queued = s.scalar(select(TrainingRun).where(TrainingRun.state == "queued", wanted)
                              .order_by(TrainingRun.kind.desc(), TrainingRun.id).limit(1))  # train > audit
            if queued is None:
                return None
            claimed = s.execute(update(TrainingRun).where(TrainingRun.id == queued.id, TrainingRun.state == "queued")
                                .values(state="running", started_at=utcnow(), host=self.host, pid=os.getpid(),
                                        version=version_name(queued.id, queued.kind))).rowcount
            return queued.id if claimed else None

    def _prepare(self) -> dict:
        if self.prepare is not None:
            return self.prepare(self.engine, self.settings)
        return prepare_dataset(self.engine, self.settings)

    def _spawn_process(self, run_id: int, log_path: Path):
        return spawn_job(run_id, database_url=self.database_url, log_path=log_path, cwd=self.settings.home)

    def _log_path(self, version: str | None) -> Path:
        return self.settings.models_dir / (version or "unknown") / "train.log"

    def _shown(self, path: Path) -> str:
        """A path as the user knows it: relative to the home folder when it is inside."""
        try:
            return str(path.relative_to(self.settings.home))
        except ValueError:
            return str(path)

    def _fail(self, run_id: int, error: str) -> None:
        """Before any process ran: there is no train.log to point to."""
        with session_scope(self.engine, write=True) as s:
            run = s.get(TrainingRun, run_id)
            run.state, run.error, run.finished_at = "failed", error, utcnow()
            version = run.version
        log.error("training run %d (%s) failed: %s", run_id, version, _first_line(error))


def prepare_dataset(engine, settings: TrainingSettings) -> dict:
    """Bring the managed dataset up to date; the run trains on that snapshot even if a newer one appears."""
    import yaml

    from pipeline.labels.dataset import build_dataset
    from pipeline.errors import TrainingError
    from storage.tables import DatasetVersion

    build_dataset(engine, settings.home, settings.dataset_dir, settings.dataset)
    try:
        snapshot = Path(yaml.safe_load((settings.dataset_dir / "data.yaml").read_text(encoding="utf-8"))["path"])
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        raise TrainingError("no_dataset", "no dataset yet: drop labelled images into labeled/") from None
    with session_scope(engine) as s:
        rel = os.path.relpath(snapshot, settings.home)
        dv = s.scalar(select(DatasetVersion).where(or_(DatasetVersion.path == rel,
                                                       DatasetVersion.path == str(snapshot)))
                      .order_by(DatasetVersion.id.desc()).limit(1))
        if dv is None or dv.val_images == 0 or dv.train_images == 0:
            raise TrainingError("no_dataset", f"{snapshot}: the dataset needs images in both train and val")
        return {"data": str(snapshot / "data.yaml"), "dataset_version_id": dv.id, "fingerprint": dv.fingerprint,
                "classes": list(dv.classes)}


def _alive(pid: int | None) -> bool:
    """Is the run's process (the training job, or the daemon or CLI that claimed it) still there?"""
    if not pid:
        return False
    if pid == os.getpid():
        return True
    try:
        import psutil

        cmd = " ".join(psutil.Process(pid).cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to look at
        return False
    return any(mark in cmd for mark in ("pipeline.training.job", "coverwatch", "watcher"))


def _keep_params(run: TrainingRun, settings: TrainingSettings) -> bool:
    """A resumed run keeps its dataset snapshot and settings; one interrupted by the restart that upgraded
    coverwatch takes the config's value for a setting added since (training.max_class_drop, say)."""
    if not run.params:
        return False
    missing = {k: v for k, v in settings.as_params().items() if k not in run.params}
    if missing:
        run.params = {**run.params, **missing}
    return True


def _word(kind: str | None) -> str:
    return "training" if kind in (None, "train") else kind


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else "failed"


def _exit_text(rc: int) -> str:
    return f"signal {-rc}" if rc < 0 else f"exit code {rc}"


def run_until_done(engine, settings: TrainingSettings, run_id: int, *, database_url: str, spawn=None,
                   prepare=None, on_progress: Callable | None = None, poll_seconds: float = 1.0) -> dict:
    """Serve the queue in the foreground until run `run_id` ends (`coverwatch train --wait`); its summary.

    Interrupted (Ctrl-C), the job is stopped and resumes at the next start, in the daemon or here.
    """
    import time

    sup = TrainingSupervisor(engine, settings, database_url=database_url, spawn=spawn, prepare=prepare,
                             poll_seconds=0.0, only=run_id)
    shown = None
    try:
        while True:
            sup.tick(time.monotonic())
            summary = run_summary(engine, run_id)
            if summary["state"] in ("done", "failed"):
                return summary
            if on_progress and (summary["state"], summary["fold"], summary["epoch"]) != shown:
                shown = (summary["state"], summary["fold"], summary["epoch"])
                on_progress(summary)
            time.sleep(poll_seconds)
    finally:
        sup.shutdown()
