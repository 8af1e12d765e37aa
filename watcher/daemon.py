"""The daemon: events and rescans feed a settle tracker; complete files go to the pipeline in batches.

It is a small class with initialize / loop_once / shutdown (huey's consumer shape). Signal handlers only set
the stop event; `loop_once(now)` takes the clock so a test can drive a single iteration.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from pipeline.dataset import build_dataset
from pipeline.ingest import ingest_batch
from pipeline.intake.core import Claim, Layout, forget_vanished
from pipeline.labelled import expire_partners, ingest_labelled
from pipeline.steps import Step
from storage.db import make_engine, session_scope, sqlite_path, upgrade_database
from storage.files import MoveBackoff, finish_moves, unfinished_moves
from storage.leases import acquire_lease, release_dead_workers, worker_process_alive
from storage.tables import File, FileState, Worker
from storage.errors import CoverwatchError, DatabaseLost
from watcher.config import Config, dataset_options, load_config
from watcher.errors import ConfigError
from watcher.events import Hint, NameFilter, start_observer, wants_polling
from watcher.home import ensure_folders
from watcher.settle import Settler
from watcher.systemd import Notifier

log = logging.getLogger(__name__)

DROP_FOLDERS = ("inbox", "labeled")
ROLES = ("all", "inference", "training")
HEARTBEAT_SECONDS = 5.0
MODEL_CHECK_SECONDS = 2.0
INGEST_BATCH = 256  # files per bookkeeping transaction; the step batches its own model calls
LABELLED_PER_PASS = 64  # labelled files per loop pass: the rest wait for the next, so the inbox keeps flowing
MAX_BACKOFF = 60.0
EXPIRE_SECONDS = 1.0  # how often labelled files waiting for a partner are checked for their timeout
DATASET_REBUILD_SECONDS = 3.0  # at most one dataset rebuild this often, and only after labels changed
PATH_MAX = 4096  # Linux, with the terminating NUL: a longer path reaches no system call
# Keys a running daemon cannot change on SIGHUP (the loaded model and its decoding were made from them).
RESTART_KEYS = {"task": (), "model": ("weights", "imgsz", "batch", "backend", "device"),
                "watch": ("max_pixels", "max_aspect"), "metrics": ("port",)}
TASK_TRAINING_KEYS = ("base", "imgsz")  # follow `task` when unset: kept with it when a task change waits


class Daemon:
    """Watch the drop folders and take every complete file to a final or waiting state.

    Example:
        >>> d = Daemon(load_config("home/coverwatch.yaml"), step=NoopStep())
        >>> d.run()   # until SIGTERM, or until d.stop.set() from another thread
    """

    def __init__(self, cfg: Config, *, step: Step | None = None, stop: threading.Event | None = None,
                 engine=None, clock=time.monotonic, role: str = "all"):
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.clock = clock
        if role not in ROLES:
            raise ConfigError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}")
        self.role = role
        self.does_inference = role in ("all", "inference")  # watch the folders, classify, ingest labels
        self.does_training = role in ("all", "training")  # serve the training queue
        self.engine = engine or make_engine(cfg.database_url)
        self.step = step
        self.hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self.settler = Settler(cfg.watch.settle_seconds)
        self.names = NameFilter()
        self.roots = {name: cfg.path(name) for name in DROP_FOLDERS}
        self.layout = Layout(cfg.home, cfg.path("archive"), cfg.path("quarantine"))
        self.observer = None
        self.polling = False
        self.worker_id: int | None = None
        self._failures: dict[str, int] = defaultdict(int)
        self._moves = MoveBackoff()  # moves that failed for a lasting reason: tried again less and less often
        self._next_rescan = 0.0
        self._next_heartbeat = 0.0
        self._last_rescan: datetime | None = None
        self._peeked: Hint | None = None
        self._next_model_check = 0.0
        self._model_was_ready = True  # the start-up rescan already decides; only a change triggers another
        self._next_report: datetime | None = None  # wall clock: the schedule outlives restarts
        self._next_expire = 0.0
        self._next_dataset = 0.0
        self._labels_changed = True  # build at start when the labels differ from the last dataset
        self._batch = False  # `coverwatch process`: the drop is taken as it is, no grace for class folders
        self.awaiting_partner = 0  # after process_pending: labelled files still waiting for a partner
        self._reload_requested = threading.Event()
        self._said_too_long: set[str] = set()
        self._finished: set[str] | None = None  # process mode: files taken to a final or waiting state
        self.notifier = Notifier.from_environment()
        self._metrics = None
        self.training = None  # pipeline.training.TrainingSupervisor, made on the first loop that serves training
        self._training_cfg = None
        self._db_file: tuple[int, int] | None = None  # SQLite: (device, inode) of the file opened at start

    # -- lifecycle ---------------------------------------------------------------------------------------

    def initialize(self, *, observe: bool = True) -> None:
        observe = observe and self.does_inference
        ensure_folders(self.cfg)
        upgrade_database(self.engine)
        self._db_file = self._database_file()
        if self.step is None:
            self.step = build_step(self.cfg, self.engine)
        self._register_worker()
        self.recover()
        if observe:
            self.polling = wants_polling(self.cfg.watch.polling, list(self.roots.values()))
            self._start_observer()
        if self.does_inference:
            self.rescan(self.clock())
            log.info("watching %s (%s)", ", ".join(str(p) for p in self.roots.values()),
                     "polling" if self.polling else "inotify")
        else:
            log.info("role %s: not watching the drop folders", self.role)
        if self.cfg.metrics.port and observe:
            from watcher.metrics import serve_metrics

            started = self.clock()
            self._metrics = serve_metrics(self.cfg.metrics.port, self.engine, lambda: self.clock() - started)
        self.notifier.ready(self._status_line())

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
        self._batch = True
        self.initialize(observe=False)
        # Each file once: a batch that is retried (a failing step, a locked database) is taken again.
        self._finished = finished = set()
        try:
            while len(self.settler) and not self.stop.is_set():
                if all(self._failures.get(p, 0) > 3 for p in self.settler.paths()):
                    break
                due = self.settler.next_due()
                if due is not None and due > self.clock():
                    time.sleep(min(due - self.clock(), 1.0))
                before = len(finished)
                self.loop_once()
                if progress and len(finished) > before:
                    progress(len(finished) - before)
            if self.does_inference:  # the timeouts of files left waiting by earlier runs, and a current dataset
                self._next_expire = self._next_dataset = 0.0
                self._labelled_upkeep(self.clock())
                self.awaiting_partner = self._count_awaiting_partner()
        finally:
            self.shutdown()
        return len(finished)

    def shutdown(self) -> None:
        self.notifier.stopping()
        if self.training is not None:
            self.training.shutdown()  # SIGTERM: the run resumes from its last.pt on the next start
        if self._metrics is not None:
            self._metrics[0].shutdown()
            self._metrics[0].server_close()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        close = getattr(self.step, "close", None)
        if close:
            close()
        try:
            with session_scope(self.engine) as s:
                s.execute(update(Worker).where(Worker.id == self.worker_id).values(stopped_at=_utcnow()))
        except OperationalError:
            log.warning("could not record the shutdown in the database")
        self.engine.dispose()
        self.notifier.close()
        log.info("stopped")

    # -- one iteration -----------------------------------------------------------------------------------

    def loop_once(self, now: float | None = None) -> int:
        """Drain hints, rescan when due, process what is complete. Returns how many files were taken."""
        now = self.clock() if now is None else now
        self._check_database_file()
        self.notifier.ping(now)
        if self._reload_requested.is_set():
            self._reload_requested.clear()
            self.reload()
        taken = 0
        if self.does_inference:
            taken = self._watch_and_ingest(now)
            now = self.clock()
            self._labelled_upkeep(now)
        self._report_if_due()
        self._training_tick(now)
        if now >= self._next_heartbeat:
            self._heartbeat()
            self.notifier.status(self._status_line())
            self._next_heartbeat = now + HEARTBEAT_SECONDS
        return taken

    def _watch_and_ingest(self, now: float) -> int:
        self._drain(now)
        self._offer_waiting_files(now)
        if now >= self._next_rescan:
            self.rescan(now)
        if self.observer is not None and not self.observer.is_alive():
            log.error("the file observer died; restarting it and rescanning")
            self._start_observer()
            self.rescan(now)
        taken = 0
        labelled, deferred = 0, []
        while not self.stop.is_set():
            ready = self.settler.ready(now, limit=INGEST_BATCH)
            if not ready:
                break
            ready, later = self._labelled_budget(ready, LABELLED_PER_PASS - labelled)
            labelled += sum(1 for p in ready if self._folder_of(Path(p)) == "labeled")
            deferred += later
            self._check_database_file()
            taken += len(ready)
            self._ingest(ready, now)
            now = self.clock()
            self.notifier.ping(now)  # busy is not hung: keep systemd's watchdog fed between batches
        for p in deferred:  # back in line after this pass: the next pass takes them
            self.settler.retry_later(p, self.settler.settle, now)
        return taken

    def _labelled_budget(self, ready: list[str], budget: int) -> tuple[list[str], list[str]]:
        """Split off the labelled files past this pass's budget: a big labelled drop (decoding every image,
        parsing every label) must not hold the inbox back for long."""
        take, later = [], []
        for p in ready:
            if self._folder_of(Path(p)) == "labeled":
                (take if budget > 0 else later).append(p)
                budget -= 1
            else:
                take.append(p)
        return take, later

    def rescan(self, now: float) -> None:
        """Reconcile the folders with the database: every file not accounted for becomes a candidate."""
        try:
            with session_scope(self.engine) as s:
                finish_moves(s, self.cfg.home, unfinished_moves(s), self._moves)
                self._free_dead_workers(s)
                if n := forget_vanished(s, self.cfg.home, Claim(self.worker_id, self.cfg.watch.claim_seconds)):
                    log.warning("%d files waiting in the drop folders are gone (deleted or renamed): vanished", n)
                waiting = self._accounted_locations(s)
        except OperationalError as exc:
            log.warning("rescan could not read the database (%s); trying again soon", exc.orig)
            self._next_rescan = now + 1.0
            return
        found = 0
        for root in self.roots.values():
            for path in self._walk(root):
                p = str(path)
                if p not in self.settler and self.layout.rel(path) not in waiting:
                    self.settler.hint(p, "scan", now)
                    found += 1
        self._last_rescan = _utcnow()
        self._next_rescan = now + self.cfg.watch.rescan_seconds
        if found:
            log.debug("rescan found %d candidate files", found)

    def reload(self) -> None:
        """SIGHUP: re-read the config; watch paths, intervals and thresholds change without a restart.

        An invalid new config is rejected with one log line and the running one is kept.
        """
        self.notifier.reloading()
        try:
            new = load_config(self.cfg.config_path)
            if new.database_url != self.cfg.database_url:
                raise ConfigError("database: changing the database needs a restart")
            ensure_folders(new)
        except CoverwatchError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self.notifier.status(self._status_line())
            return
        old_roots, old_polling = self.roots, self.cfg.watch.polling
        new, kept = _keep_restart_keys(self.cfg, new)
        self.cfg = new
        self.settler.settle = new.watch.settle_seconds
        self.roots = {name: new.path(name) for name in DROP_FOLDERS}
        self.layout = Layout(new.home, new.path("archive"), new.path("quarantine"))
        reconfigure = getattr(self.step, "reconfigure", None)
        if reconfigure:
            reconfigure(conf=new.model.conf, review_below=new.model.review_below)
        if self.observer is not None and (self.roots != old_roots or new.watch.polling != old_polling):
            self.observer.stop()
            self.polling = wants_polling(new.watch.polling, list(self.roots.values()))
            self._start_observer()
        self._next_rescan = 0.0  # look at the (maybe new) folders right away
        if kept:
            log.warning("config reloaded from %s, except %s: a change there needs a restart (still using %s)",
                        new.config_path, ", ".join(kept), ", ".join(f"{k}={v}" for k, v in kept.items()))
        else:
            log.info("config reloaded from %s", new.config_path)
        self.notifier.status(self._status_line())

    def recover(self) -> None:
        """Finish the moves that a crash interrupted: destinations committed, files not there yet."""
        with session_scope(self.engine) as s:
            rows = unfinished_moves(s)
            if rows:
                log.info("finishing %d moves interrupted by a restart", len(rows))
                finish_moves(s, self.cfg.home, rows, self._moves)

    # -- helpers -----------------------------------------------------------------------------------------

    def _ingest(self, ready: list[str], now: float) -> None:
        by_folder: dict[str, list[Path]] = defaultdict(list)
        for p in ready:
            by_folder[self._folder_of(Path(p))].append(Path(p))
        for folder, paths in sorted(by_folder.items(), key=lambda kv: kv[0] == "labeled"):  # the inbox first
            if folder is None or self.stop.is_set():
                continue
            if folder == "labeled":
                report = self._ingest_labelled(paths)
            else:
                report = ingest_batch(self.engine, self.layout, folder, self.roots[folder], paths, self.step,
                                      max_bytes=self.cfg.watch.max_bytes,
                                      claim=Claim(self.worker_id, self.cfg.watch.claim_seconds))
            retry = {str(p) for p in report.retry}
            for p in paths:
                if str(p) in retry:
                    self._failures[str(p)] += 1
                    delay = min(MAX_BACKOFF, 0.5 * 2 ** self._failures[str(p)])
                    self.settler.retry_later(str(p), delay, now)
                else:
                    self._failures.pop(str(p), None)
                    if self._finished is not None:
                        self._finished.add(str(p))

    def _ingest_labelled(self, paths: list[Path]):
        w = self.cfg.watch
        report = ingest_labelled(self.engine, self.layout, self.roots["labeled"], paths, max_bytes=w.max_bytes,
                                 max_pixels=w.max_pixels, pair_timeout=w.pair_timeout_seconds,
                                 class_folder_grace=self._class_folder_grace(), max_boxes=w.max_boxes)
        self._labels_changed |= report.processed > 0
        return report

    def _labelled_upkeep(self, now: float) -> None:
        """Decide for labelled files whose partner never came; rebuild the dataset when labels changed."""
        w, t = self.cfg.watch, self.cfg.training
        try:
            if self.stop.is_set():  # SIGTERM is honoured between steps
                return
            if now >= self._next_expire:
                self._next_expire = now + EXPIRE_SECONDS
                report = expire_partners(self.engine, self.layout, self.roots["labeled"],
                                         pair_timeout=w.pair_timeout_seconds, max_pixels=w.max_pixels,
                                         class_folder_grace=self._class_folder_grace(), max_boxes=w.max_boxes)
                self._labels_changed |= report.processed > 0
            if self._labels_changed and now >= self._next_dataset and not self.stop.is_set():
                self._next_dataset = now + DATASET_REBUILD_SECONDS
                build_dataset(self.engine, self.cfg.home, self.cfg.path("dataset"), dataset_options(t))
                self._labels_changed = False
        except (OSError, OperationalError) as exc:
            log.warning("labelled upkeep failed (%s); trying again soon", exc)
        except Exception:  # noqa: BLE001 - a bug here must not stop the daemon; the next change retries
            log.exception("labelled upkeep failed")
            self._labels_changed = False

    def _class_folder_grace(self) -> float | None:
        """A classify home takes a folder of images alone as a class folder once nothing arrived there for
        settle_seconds (a labelImg drop copied images first has its labels on disk by then); `process` takes
        the drop as it is. A detect home keeps waiting the pair timeout: a label is what it wants."""
        if self.cfg.task != "classify":
            return None
        return 0.0 if self._batch else self.cfg.watch.settle_seconds

    def _count_awaiting_partner(self) -> int:
        try:
            with session_scope(self.engine) as s:
                return s.scalar(select(func.count()).select_from(File).where(
                    File.state == FileState.awaiting_partner.value)) or 0
        except OperationalError:
            return 0

    def _hold_report_lease(self, every) -> bool:
        """Several workers share one database: only the lease holder writes the report this period."""
        with session_scope(self.engine) as s:
            return acquire_lease(s, "report", self.worker_id, every.total_seconds() * 0.9)

    def _training_tick(self, now: float) -> None:
        """Serve the training queue (pipeline.training: triggers, one run at a time) on training roles, and
        re-classify recent images after a promotion on inference roles.

        Not in batch mode (`coverwatch process`, no observer): it would only start a run to stop it at exit.
        """
        if self.training is None and self.observer is None and self.does_inference:
            return
        if not self.does_training and not self.cfg.training.reclassify_days:
            return
        from pipeline.training import TrainingSupervisor
        from watcher.config import training_settings

        try:
            if self.training is None:
                self.training = TrainingSupervisor(self.engine, training_settings(self.cfg),
                                                   database_url=self.cfg.database_url)
                self._training_cfg = self.cfg
            elif self._training_cfg is not self.cfg:  # reloaded: new thresholds apply from the next tick
                self.training.settings, self._training_cfg = training_settings(self.cfg), self.cfg
            self.training.tick(now, step=self.step if self.does_inference else None, serve=self.does_training)
        except OperationalError as exc:
            log.warning("training check could not use the database (%s); trying again soon", exc.orig)
        except Exception:  # noqa: BLE001 - a training problem must never stop the daemon
            log.exception("training check failed")

    def _report_if_due(self) -> None:
        """Write the Excel report every reports.every_minutes, counted from the last one written (by any run).

        A failure is logged and tried again at the next period; it never stops the loop.
        """
        now = _utcnow()
        if self._next_report is not None and now < self._next_report:
            return
        from datetime import timedelta

        from pipeline.report import publish_report  # XlsxWriter: loaded when first needed
        from storage.queries import last_report_time

        every = timedelta(minutes=self.cfg.reports.every_minutes)
        try:
            if self._next_report is None:
                with session_scope(self.engine) as s:
                    last = last_report_time(s)
                if last is not None and now < last + every:
                    self._next_report = last + every
                    return
            if not self._hold_report_lease(every):
                self._next_report = now + every
                return
            publish_report(self.engine, self.cfg.path("reports"), home=self.cfg.home, keep=self.cfg.reports.keep,
                           low_confidence=self.cfg.model.review_below, labels=dataset_options(self.cfg.training),
                           now=now)
        except Exception:  # noqa: BLE001 - a report is never worth stopping the daemon for
            log.exception("the Excel report could not be written; trying again in %s minutes",
                          self.cfg.reports.every_minutes)
        self._next_report = now + every

    def _accounted_locations(self, s) -> set[str]:
        """Files in a drop folder that already have a row and must not be registered again: those waiting
        for a partner or a model (until the step says it has one), and those whose move is not finished."""
        states = [FileState.awaiting_partner.value]
        if not self._model_ready():
            states.append(FileState.awaiting_model.value)
        unmoved = File.final_path.is_not(None) & File.moved_at.is_(None)
        return set(s.scalars(select(File.location).where(File.state.in_(states) | unmoved)))

    def _offer_waiting_files(self, now: float) -> None:
        """When a model appears (first training, a download), rescan at once: awaiting_model files go through."""
        if now < self._next_model_check:
            return
        self._next_model_check = now + MODEL_CHECK_SECONDS
        ready = self._model_ready()
        if ready and not self._model_was_ready:
            log.info("a model is available: files waiting for one are classified now")
            self._next_rescan = 0.0
        self._model_was_ready = ready

    def _model_ready(self) -> bool:
        ready = getattr(self.step, "model_ready", None)
        return bool(ready()) if ready else True

    def _folder_of(self, path: Path) -> str | None:
        for name, root in self.roots.items():
            if path.is_relative_to(root):
                return name
        return None

    def _drain(self, now: float) -> None:
        while True:
            if self._peeked is not None:
                hint, self._peeked = self._peeked, None
            else:
                try:
                    hint = self.hints.get_nowait()
                except queue.Empty:
                    return
            if hint.kind == "dir":
                for path in self._walk(Path(hint.path)):
                    self.settler.hint(str(path), "scan", now)
            elif hint.kind == "deleted" or self.names(os.path.basename(hint.path)):
                self.settler.hint(hint.path, hint.kind, now)

    def _walk(self, root: Path):
        """Every candidate file below root; symlinked folders are not entered (links are files to us)."""
        try:
            entries = list(os.scandir(root))
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                self._too_long(str(root))
            return
        for entry in entries:
            if not self.names(entry.name):
                continue
            if len(os.fsencode(entry.path)) >= PATH_MAX:
                self._too_long(entry.path)  # no system call takes it: it cannot even be moved to quarantine
            elif entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path))
            else:
                yield Path(entry.path)

    def _too_long(self, path: str) -> None:
        """One warning per path, not one per rescan."""
        if path not in self._said_too_long:
            self._said_too_long.add(path)
            shown = path if len(path) <= 200 else f"{path[:100]}...{path[-100:]}"
            log.warning("%s: path longer than the system allows (%d bytes); it is left alone: move it higher up",
                        shown, PATH_MAX - 1)

    def _wait(self) -> None:
        """Sleep until the next file is due, an event arrives, or a periodic job is due."""
        now = self.clock()
        due = min(x for x in (self.settler.next_due(), self._next_rescan, self._next_heartbeat) if x is not None)
        timeout = max(0.0, min(due - now, 0.5))
        try:
            self._peeked = self.hints.get(timeout=timeout)  # first in line for the next drain: order matters
        except queue.Empty:
            return

    def _start_observer(self) -> None:
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

    def _register_worker(self) -> None:
        with session_scope(self.engine) as s:
            w = Worker(host=socket.gethostname(), pid=os.getpid(), role=self.role)
            s.add(w)
            s.flush()
            self.worker_id = w.id

    def _free_dead_workers(self, s) -> None:
        if n := release_dead_workers(s, socket.gethostname(), me=self.worker_id, alive=_process_alive):
            log.info("freed the files held by %d stopped worker(s) on this host", n)

    def _heartbeat(self) -> None:
        try:
            with session_scope(self.engine) as s:
                s.execute(update(Worker).where(Worker.id == self.worker_id).values(
                    heartbeat_at=_utcnow(), queue_depth=len(self.settler), last_rescan_at=self._last_rescan))
        except OperationalError as exc:
            log.warning("heartbeat not recorded (%s)", exc.orig)

    def _database_file(self) -> tuple[int, int] | None:
        path = sqlite_path(self.engine)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return (-1, -1)
        return (st.st_dev, st.st_ino)

    def _check_database_file(self) -> None:
        """SQLite keeps writing to an open file that was deleted or replaced, and every record would be lost
        without a word. Stop before taking another file; the restart opens a new database and rescans."""
        if self._db_file is None or self._database_file() == self._db_file:
            return
        self.stop.set()
        msg = (f"database: {sqlite_path(self.engine)} was deleted or replaced while the daemon ran; stopping "
               f"without taking more files, so that a restart opens a new database and rescans the folders")
        log.error("%s", msg)
        self.notifier.status("stopping: the database file was deleted or replaced")
        raise DatabaseLost(msg)

    def _status_line(self) -> str:
        model = getattr(self.step, "model_version", None)
        return f"{len(self.settler)} files waiting to settle; model {model or 'none'}"

    def _catch_signals(self) -> None:
        """Handlers only set flags; the loop does the work."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())
        # `kill -USR1 PID`: every thread's stack to stderr (the journal), for a daemon that seems stuck.
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def _keep_restart_keys(old: Config, new: Config) -> tuple[Config, dict[str, object]]:
    """`new`, with the running values of the keys that only a restart changes; and those that differed."""
    kept: dict[str, object] = {}
    update: dict[str, object] = {}
    for section, keys in RESTART_KEYS.items():
        if not keys:
            if getattr(old, section) != getattr(new, section):
                kept[section], update[section] = getattr(old, section), getattr(old, section)
            continue
        was, now = getattr(old, section), getattr(new, section)
        differ = {k: getattr(was, k) for k in keys if getattr(was, k) != getattr(now, k)}
        if differ:
            kept.update({f"{section}.{k}": v for k, v in differ.items()})
            update[section] = now.model_copy(update=differ)
    if "task" in kept:  # the training keys that follow the task stay with the task still in use
        was, now = old.training, new.training
        differ = {k: getattr(was, k) for k in TASK_TRAINING_KEYS if getattr(was, k) != getattr(now, k)}
        if differ:
            kept.update({f"training.{k}": v for k, v in differ.items()})
            update["training"] = now.model_copy(update=differ)
    return (new.model_copy(update=update) if update else new), kept


def build_step(cfg: Config, engine) -> Step:
    """The classifier of the config: the registry's champion when there is one, else `model.weights` (a path,
    relative to the home folder, or a pretrained name that Ultralytics downloads into models/ when online)."""
    from pipeline.classify import ClassifyStep
    from pipeline.registry import champion_weights

    name = cfg.model.weights
    local = (cfg.home / name).resolve()
    weights = name if ("/" not in name and not local.exists()) else local
    roots = [cfg.path("models")] + ([local] if isinstance(weights, Path) else [])
    return ClassifyStep(task=cfg.task, weights=weights, imgsz=cfg.model.imgsz, batch=cfg.model.batch,
                        conf=cfg.model.conf, backend=cfg.model.backend, device=cfg.model.device,
                        review_dir=cfg.path("review"), review_below=cfg.model.review_below,
                        max_pixels=cfg.watch.max_pixels, max_aspect=cfg.watch.max_aspect, allowed_roots=roots,
                        model_source=lambda: champion_weights(engine, cfg.home))


def _process_alive(worker: Worker) -> bool:
    """Is this host's worker still running? Not when the pid is ours now (reused by us)."""
    return worker.pid != os.getpid() and worker_process_alive(worker)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
