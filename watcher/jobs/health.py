"""Is the daemon alive, and is its database still the file it opened? The heartbeat row, systemd's STATUS
line, and the check that stops the daemon when its SQLite file was deleted or replaced."""

from __future__ import annotations

import logging
import os

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from storage.db import note_lost, session_scope, sqlite_path
from storage.errors import DatabaseLost
from storage.tables import Worker
from watcher.jobs.base import Job, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0


class DatabaseFile:
    """SQLite keeps writing to an open file that was deleted or replaced, and every record would be lost
    without a word. `check()` raises DatabaseLost (and sets `stop`) before another file is taken; the restart
    opens a new database and rescans."""

    def __init__(self, engine, stop, notifier):
        self.engine, self.stop, self.notifier = engine, stop, notifier
        self.opened: tuple[int, int] | None = None  # (device, inode) of the file at start; None: not SQLite

    def remember(self) -> None:
        self.opened = self._identity()

    def check(self) -> None:
        if self.opened is None or self._identity() == self.opened:
            return
        self.stop.set()
        msg = (f"database: {sqlite_path(self.engine)} was deleted or replaced while the daemon ran; stopping "
               f"without taking more files, so that a restart opens a new database and rescans the folders")
        log.error("%s", msg)
        note_lost(self.engine, msg)  # the new database will not know: `status` reads this note
        self.notifier.status("stopping: the database file was deleted or replaced")
        raise DatabaseLost(msg)

    def _identity(self) -> tuple[int, int] | None:
        path = sqlite_path(self.engine)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return (-1, -1)
        return (st.st_dev, st.st_ino)


class Heartbeat(Job):
    """Every HEARTBEAT_SECONDS: the worker's row (heartbeat, queue depth, last rescan) and systemd's STATUS."""

    def run(self, now: float) -> None:
        d = self.d
        d.database.check()  # never write a heartbeat into a file nobody will read
        try:
            with session_scope(d.engine) as s:
                s.execute(update(Worker).where(Worker.id == d.worker_id).values(
                    heartbeat_at=utcnow(), queue_depth=len(d.settler), last_rescan_at=d.rescan.last_at))
        except OperationalError as exc:
            log.warning("heartbeat not recorded (%s)", exc.orig)
        d.notifier.status(d.status_line())
        self.next_at = now + HEARTBEAT_SECONDS
