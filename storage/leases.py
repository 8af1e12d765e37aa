"""Named leases in the database: a job only one worker may do at a time (writing the hourly report).

A lease is held until it expires; the holder renews it by acquiring again. Works the same on SQLite and
PostgreSQL: a conditional UPDATE, else an INSERT that the primary key makes fail for all but one worker.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.clock import as_utc
from storage.tables import File, Lease, Worker


def acquire_lease(session: Session, name: str, holder: int, seconds: float, now: datetime | None = None) -> bool:
    """True when `holder` holds lease `name` for the next `seconds` (taken, renewed, or taken over)."""
    now = now or datetime.now(timezone.utc)
    until = now + timedelta(seconds=seconds)
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
        .values(holder=holder, expires_at=until)
    ).rowcount
    if taken:
        return True
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=until))
            session.flush()
    except IntegrityError:
        return False  # somebody else holds it and it has not expired
    return True


def release_lease(session: Session, name: str, holder: int) -> None:
    session.execute(update(Lease).where(Lease.name == name, Lease.holder == holder)
                    .values(expires_at=datetime(1970, 1, 1, tzinfo=timezone.utc)))


def release_dead_workers(session: Session, host: str, *, me: int, alive: Callable[[Worker], bool]) -> int:
    """Mark this host's workers whose process is gone as stopped and free the files they held; how many.

    A daemon killed with -9 and restarted by systemd would otherwise leave its files claimed until
    `watch.claim_seconds` pass. Only this host's processes can be checked; other hosts' claims still expire.
    """
    dead = [w.id for w in session.scalars(select(Worker).where(Worker.host == host, Worker.stopped_at.is_(None),
                                                                Worker.id != me))
            if not alive(w)]
    if not dead:
        return 0
    session.execute(update(Worker).where(Worker.id.in_(dead)).values(stopped_at=datetime.now(timezone.utc)))
    session.execute(update(File).where(File.claimed_by.in_(dead), File.moved_at.is_(None))
                    .values(claimed_by=None, claim_expires_at=None))
    return len(dead)


def worker_process_alive(worker: Worker) -> bool:
    """Is this host's worker process still running? Its pid may have been reused since, by a process that
    started after the worker registered."""
    import psutil

    try:
        started = psutil.Process(worker.pid).create_time()
    except psutil.Error:
        return False
    return started <= as_utc(worker.started_at).timestamp() + 1.0
