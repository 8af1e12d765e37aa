"""The daemon: events and rescans feed a settle tracker; complete files go to the pipeline in batches.

It is a small class with initialize / loop_once / shutdown (huey's consumer shape): each pass runs the jobs
that are due (watcher.jobs), the intake of settled files (watcher.drops) in between, then sleeps until the
earliest is due or an event arrives. Signal handlers only set flags; `loop_once(now)` takes the clock so a test
can drive a single iteration.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from pipeline.intake.core import Layout
from pipeline.inference.steps import Step
from storage.db import make_engine, session_scope, upgrade_database
from storage.errors import CoverwatchError
from storage.files import MoveBackoff, finish_moves, unfinished_moves
from storage.tables import File, FileState, Worker
from watcher.config import Config
from watcher.drops import DropIntake
from watcher.errors import ConfigError
from watcher.events import Hint, NameFilter, start_observer, wants_polling
from watcher.home import ensure_folders
from watcher.jobs import (DatabaseFile, Drain, Heartbeat, LabelledUpkeep, ModelWatch, Reload, Report, Rescan, Training,
                          run_due, utcnow)
from watcher.jobs.reload import reread
from watcher.settle import Settler
from watcher.systemd import Notifier

log = logging.getLogger(__name__)

DROP_FOLDERS = ("inbox", "labeled")
ROLES = ("all", "inference", "training")
MAX_SLEEP = 0.5  # the longest wait: stop, SIGHUP and the wall-clock jobs are seen within it


class Daemon:
    """Watch the drop folders and take every complete file to a final or waiting state.

    Example:
        >>> d = Daemon(load_config("home/coverwatch.yaml"), step=NoopStep())
        >>> d.run()   # until SIGTERM, or until d.stop.set() from another thread
    """

    def __init__(self, cfg: Config, *, step: Step | None = None, stop: threading.Event | None = None,
                 engine=None, clock=time.monotonic, role: str = "all"):
        if role not in ROLES:
            raise ConfigError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}")
        self.cfg, self.role, self.clock, self.step = cfg, role, clock, step
        self.stop = stop or threading.Event()
        self.does_inference = role in ("all", "inference")  # watch the folders, classify, ingest labels
        self.does_training = role in ("all", "training")  # serve the training queue
        self.engine = engine or make_engine(cfg.database_url)
        self.hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self.settler = Settler(cfg.watch.settle_seconds)
        self.names = NameFilter()
        self._set_folders(cfg)
        self.observer, self.polling = None, False
        self.worker_id: int | None = None
        self.moves = MoveBackoff()  # moves that failed for a lasting reason: tried again less and less often
        self.awaiting_partner = 0  # after process_pending: labelled files still waiting for a partner
        self.notifier = Notifier.from_environment()
        self._metrics = None
        self.database = DatabaseFile(self.engine, self.stop, self.notifier)
        self.intake = DropIntake(self)
        self.sighup, self.drain, self.model_watch = Reload(self), Drain(self), ModelWatch(self)
        self.rescan, self.upkeep, self.report = Rescan(self), LabelledUpkeep(self), Report(self)
        self.training, self.heartbeat = Training(self), Heartbeat(self)
        # In this order around the intake; a training-only role does not look at the folders.
        watching = self.does_inference
        self.before = [self.sighup] + ([self.drain, self.model_watch, self.rescan] if watching else [])
        self.after = ([self.upkeep] if watching else []) + [self.report, self.training, self.heartbeat]

    # -- lifecycle ---------------------------------------------------------------------------------------

    def initialize(self, *, observe: bool = True) -> None:
        observe = observe and self.does_inference
        ensure_folders(self.cfg)
        upgrade_database(self.engine)
        self.database.remember()
        if self.step is None:
            self.step = build_step(self.cfg, self.engine)
        self._register_worker()
        self.recover()
        if observe:
            self.polling = wants_polling(self.cfg.watch.polling, list(self.roots.values()))
            self.start_observer()
        if self.does_inference:
            self.rescan.run(self.clock())
            self._warm_up(observe)
            log.info("watching %s (%s)", ", ".join(str(p) for p in self.roots.values()),
                     "polling" if self.polling else "inotify")
        else:
            log.info("role %s: not watching the drop folders", self.role)
        if self.cfg.metrics.port and observe:
            from watcher.metrics import serve_metrics

            started = self.clock()
            self._metrics = serve_metrics(self.cfg.metrics.port, self.engine, lambda: self.clock() - started)
        self.notifier.ready(self.status_line())

    def _warm_up(self, service: bool) -> None:
        """The model loads in the background from here, beside the first batch's hashing and registering
        (~0.1 s sooner to the first row of a cold `process`): a service's at once, a `process`'s when the inbox
        has files for it. Weights not on disk yet (a pretrained name to download) wait for the first image."""
        inbox = self.roots["inbox"]
        if not service and not any(Path(p).is_relative_to(inbox) for p in self.settler.paths()):
            return
        if self.step.model_ready():
            self.step.warm_up()

    def run(self) -> None:
        """Initialize, loop until stopped, shut down. SIGTERM/SIGINT stop it cleanly."""
        self._catch_signals()
        self.initialize()
        print(f"coverwatch: watching {self.roots['inbox']} and {self.roots['labeled']}; database "
              f"{self.engine.url.render_as_string(hide_password=True)}", flush=True)
        try:
            while not self.stop.is_set():
                self.loop_once()
                self._wait()
        finally:
            self.shutdown()

    def process_pending(self, progress=None) -> int:
        """Batch mode (`coverwatch process`): one pass over everything waiting, then return.

        Files still failing transiently after a few tries stay where they are for the next run.
        """
        self.intake.batch = True
        self.initialize(observe=False)
        # Each file once: a batch that is retried (a failing step, a locked database) is taken again.
        self.intake.finished = finished = set()
        try:
            while len(self.settler) and not self.stop.is_set():
                if all(self.intake.failures.get(p, 0) > 3 for p in self.settler.paths()):
                    break
                due = self.settler.next_due()
                if due is not None and due > self.clock():
                    time.sleep(min(due - self.clock(), 1.0))
                before = len(finished)
                self.loop_once()
                if progress and len(finished) > before:
                    progress(len(finished) - before)
            if self.does_inference:
                self.upkeep.run_now(self.clock())
                self.awaiting_partner = self._count_awaiting_partner()
        finally:
            self.shutdown()
        return len(finished)

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.training.close()
        if self._metrics is not None:
            self._metrics[0].shutdown()
            self._metrics[0].server_close()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        if self.step is not None:  # None when initialize failed before making one
            self.step.close()
        try:
            with session_scope(self.engine) as s:
                s.execute(update(Worker).where(Worker.id == self.worker_id).values(stopped_at=utcnow()))
        except OperationalError:
            log.warning("could not record the shutdown in the database")
        self.engine.dispose()
        self.notifier.close()
        log.info("stopped")

    # -- one iteration -----------------------------------------------------------------------------------

    def loop_once(self, now: float | None = None) -> int:
        """The jobs that are due, the intake of what has settled, the jobs after it. Returns how many files
        were taken."""
        now = self.clock() if now is None else now
        self.database.check()
        self.notifier.ping(now)
        run_due(self.before, now)
        taken = self.intake.run(now) if self.does_inference else 0
        run_due(self.after, self.clock())
        return taken

    def request_reload(self) -> None:
        """What SIGHUP does (a flag, safe in a signal handler): the next pass reloads."""
        self.sighup.requested.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; watch paths, intervals and thresholds change without a restart.

        An invalid new config is rejected with one log line and the running one is kept.
        """
        self.notifier.reloading()
        try:
            new, kept = reread(self.cfg)
        except CoverwatchError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self.notifier.status(self.status_line())
            return
        self._apply(new)
        if kept:
            log.warning("config reloaded from %s, except %s: a change there needs a restart (still using %s)",
                        new.config_path, ", ".join(kept), ", ".join(f"{k}={v}" for k, v in kept.items()))
        else:
            log.info("config reloaded from %s", new.config_path)
        self.notifier.status(self.status_line())

    def recover(self) -> None:
        """Finish the moves that a crash interrupted: destinations committed, files not there yet. Another worker
        holding the database does not stop the start: every rescan finishes such moves too."""
        try:
            with session_scope(self.engine, write=True) as s:
                rows = unfinished_moves(s)
                if rows:
                    log.info("finishing %d moves interrupted by a restart", len(rows))
                    finish_moves(s, self.cfg.home, rows, self.moves)
        except OperationalError as exc:
            log.warning("interrupted moves could not be looked at (%s); the next rescan finishes them", exc.orig)

    def status_line(self) -> str:
        return f"{len(self.settler)} files waiting to settle; model {self.step.model_version or 'none'}"

    def start_observer(self) -> None:
        paths = list(self.roots.values())
        try:
            self.observer = start_observer(paths, self.hints, polling=self.polling,
                                           poll_interval=self.cfg.watch.poll_interval_seconds)
        except OSError as exc:
            # inotify watch or instance limits: polling still works, only slower to notice.
            log.warning("native file events unavailable (%s); falling back to polling", exc)
            self.polling = True
            self.observer = start_observer(paths, self.hints, polling=True,
                                           poll_interval=self.cfg.watch.poll_interval_seconds)

    # -- helpers -----------------------------------------------------------------------------------------

    def _set_folders(self, cfg: Config) -> None:
        self.roots = {name: cfg.path(name) for name in DROP_FOLDERS}
        self.layout = Layout(cfg.home, cfg.path("archive"), cfg.path("quarantine"))

    def _apply(self, new: Config) -> None:
        """Switch to a reloaded config: folders, settle time, the step's thresholds, the observer."""
        old_roots, old_polling = self.roots, self.cfg.watch.polling
        self.cfg = new
        self.settler.settle = new.watch.settle_seconds
        self._set_folders(new)
        self.step.reconfigure(conf=new.model.conf, review_below=new.model.review_below)
        if self.observer is not None and (self.roots != old_roots or new.watch.polling != old_polling):
            self.observer.stop()
            self.polling = wants_polling(new.watch.polling, list(self.roots.values()))
            self.start_observer()
        self.rescan.next_at = 0.0  # look at the (maybe new) folders right away

    def _wait(self) -> None:
        """Sleep until the next file or the earliest job is due, or an event arrives (at most MAX_SLEEP)."""
        now = self.clock()
        times = [self.settler.next_due(), *(job.next_at for job in self.before + self.after)]
        timeout = max(0.0, min([MAX_SLEEP] + [t - now for t in times if t is not None]))
        try:
            self.drain.peeked = self.hints.get(timeout=timeout)  # first in line for the next drain: order matters
        except queue.Empty:
            return

    def _count_awaiting_partner(self) -> int:
        try:
            with session_scope(self.engine) as s:
                return s.scalar(select(func.count()).select_from(File).where(
                    File.state == FileState.awaiting_partner.value)) or 0
        except OperationalError:
            return 0

    def _register_worker(self) -> None:
        with session_scope(self.engine) as s:
            w = Worker(host=socket.gethostname(), pid=os.getpid(), role=self.role)
            s.add(w)
            s.flush()
            self.worker_id = w.id

    def _catch_signals(self) -> None:
        """Handlers only set flags; the loop does the work."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        # `kill -USR1 PID`: every thread's stack to stderr (the journal), for a daemon that seems stuck.
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def build_step(cfg: Config, engine) -> Step:
    """The classifier of the config: the registry's champion when there is one, else `model.weights` (a path,
    relative to the home folder, or a pretrained name that Ultralytics downloads into models/ when online)."""
    from pipeline.inference.classify import ClassifyStep
    from pipeline.training.registry import champion_weights

    name = cfg.model.weights
    local = (cfg.home / name).resolve()
    weights = name if ("/" not in name and not local.exists()) else local
    roots = [cfg.path("models")] + ([local] if isinstance(weights, Path) else [])
    return ClassifyStep(task=cfg.task, weights=weights, imgsz=cfg.model.imgsz, batch=cfg.model.batch,
                        conf=cfg.model.conf, backend=cfg.model.backend, device=cfg.model.device,
                        review_dir=cfg.path("review"), review_below=cfg.model.review_below,
                        max_pixels=cfg.watch.max_pixels, max_aspect=cfg.watch.max_aspect, allowed_roots=roots,
                        model_source=lambda: champion_weights(engine, cfg.home))


def spare_the_collector() -> None:
    """For the processes `coverwatch run` and `process`, called once their daemon object is built (before it
    loads the model): what exists by then (modules, mappers, config) leaves the cyclic collector's scans
    (gc.freeze), and young objects are collected every 20,000 allocations instead of 700. Committing a chunk
    makes thousands of short-lived ORM objects; with Python's defaults the collector took ~20% of the
    bookkeeping thread (1.9 -> 1.5 ms per image, classify on this machine). Reference counting still frees
    everything at once; only garbage in cycles waits a little longer. Not done by Daemon itself: a process that
    makes many daemons (the tests) would freeze each one's leftovers."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 20_000), gen1, gen2)
