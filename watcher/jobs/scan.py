"""What to look at: file events into the settle tracker, a rescan that reconciles the folders with the
database, and a rescan at once when a model appears for the files waiting for one."""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from pipeline.intake.core import Claim, forget_vanished
from storage.db import session_scope
from storage.files import finish_moves, unfinished_moves
from storage.leases import release_dead_workers, worker_process_alive
from storage.tables import File, FileState, Worker
from watcher.events import Hint
from watcher.jobs.base import Job, utcnow

log = logging.getLogger(__name__)

MODEL_CHECK_SECONDS = 2.0
PATH_MAX = 4096  # Linux, with the terminating NUL: a longer path reaches no system call


class Drain(Job):
    """Every pass, first: the file events that arrived, into the settle tracker (before a rescan, so that an
    open seen by inotify counts for a file the rescan then finds)."""

    next_at = None  # events wake the loop themselves (Daemon._wait)

    def __init__(self, daemon):
        super().__init__(daemon)
        self.peeked: Hint | None = None  # taken by _wait while sleeping: first in line, order matters

    def due(self, now: float) -> bool:
        return True

    def run(self, now: float) -> None:
        d = self.d
        while True:
            if self.peeked is not None:
                hint, self.peeked = self.peeked, None
            else:
                try:
                    hint = d.hints.get_nowait()
                except queue.Empty:
                    return
            if hint.kind == "dir":
                for path in d.rescan.walk(Path(hint.path)):
                    d.settler.hint(str(path), "scan", now)
            elif hint.kind == "deleted" or d.names(os.path.basename(hint.path)):
                d.settler.hint(hint.path, hint.kind, now)


class ModelWatch(Job):
    """When a model appears (first training, a download), rescan at once: awaiting_model files go through."""

    def __init__(self, daemon):
        super().__init__(daemon)
        self.was_ready = True  # the start-up rescan already decides; only a change triggers another

    def run(self, now: float) -> None:
        self.next_at = now + MODEL_CHECK_SECONDS
        ready = self.d.step.model_ready()
        if ready and not self.was_ready:
            log.info("a model is available: files waiting for one are classified now")
            self.d.rescan.next_at = 0.0
        self.was_ready = ready


class Rescan(Job):
    """Every watch.rescan_seconds (and when the file observer died): reconcile the folders with the database,
    so every file not accounted for becomes a candidate whatever events were lost."""

    def __init__(self, daemon):
        super().__init__(daemon)
        self.last_at = None  # wall clock, for the worker's row
        self._said_too_long: set[str] = set()

    def due(self, now: float) -> bool:
        return super().due(now) or self._observer_died()

    def run(self, now: float) -> None:
        d = self.d
        if self._observer_died():
            log.error("the file observer died; restarting it and rescanning")
            d.start_observer()
        try:
            with session_scope(d.engine, write=True) as s:  # it frees, forgets and finishes moves
                waiting = self._reconcile(s)
        except OperationalError as exc:
            log.warning("rescan could not read the database (%s); trying again soon", exc.orig)
            self.next_at = now + 1.0
            return
        found = 0
        for root in d.roots.values():
            for path in self.walk(root):
                p = str(path)
                if p not in d.settler and d.layout.rel(path) not in waiting:
                    d.settler.hint(p, "scan", now)
                    found += 1
        self.last_at = utcnow()
        self.next_at = now + d.cfg.watch.rescan_seconds
        if found:
            log.debug("rescan found %d candidate files", found)

    def _reconcile(self, s) -> set[str]:
        """Finish interrupted moves, free dead workers' files, forget vanished ones; what stays accounted for."""
        d = self.d
        finish_moves(s, d.cfg.home, unfinished_moves(s), d.moves)
        if n := release_dead_workers(s, socket.gethostname(), me=d.worker_id, alive=_process_alive):
            log.info("freed the files held by %d stopped worker(s) on this host", n)
        if n := forget_vanished(s, d.cfg.home, Claim(d.worker_id, d.cfg.watch.claim_seconds)):
            log.warning("%d files waiting in the drop folders are gone (deleted or renamed): vanished", n)
        return self._accounted_locations(s)

    def _accounted_locations(self, s) -> set[str]:
        """Files in a drop folder that already have a row and must not be registered again: those waiting
        for a partner or a model (until the step says it has one), and those whose move is not finished."""
        states = [FileState.awaiting_partner.value]
        if not self.d.step.model_ready():
            states.append(FileState.awaiting_model.value)
        unmoved = File.final_path.is_not(None) & File.moved_at.is_(None)
        return set(s.scalars(select(File.location).where(File.state.in_(states) | unmoved)))

    def _observer_died(self) -> bool:
        observer = self.d.observer
        return observer is not None and not observer.is_alive()

    def walk(self, root: Path):
        """Every candidate file below root; symlinked folders are not entered (links are files to us)."""
        try:
            entries = list(os.scandir(root))
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                self._too_long(str(root))
            return
        for entry in entries:
            if not self.d.names(entry.name):
                continue
            if len(os.fsencode(entry.path)) >= PATH_MAX:
                self._too_long(entry.path)  # no system call takes it: it cannot even be moved to quarantine
            elif entry.is_dir(follow_symlinks=False):
                yield from self.walk(Path(entry.path))
            else:
                yield Path(entry.path)

    def _too_long(self, path: str) -> None:
        """One warning per path, not one per rescan."""
        if path not in self._said_too_long:
            self._said_too_long.add(path)
            shown = path if len(path) <= 200 else f"{path[:100]}...{path[-100:]}"
            log.warning("%s: path longer than the system allows (%d bytes); it is left alone: move it higher up",
                        shown, PATH_MAX - 1)


def _process_alive(worker: Worker) -> bool:
    """Is this host's worker still running? Not when the pid is ours now (reused by us)."""
    return worker.pid != os.getpid() and worker_process_alive(worker)
