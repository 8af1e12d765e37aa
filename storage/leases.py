"""Named leases in the database: a job only one worker may do at a time (writing the hourly report).

A lease is held until it expires; the holder renews it by acquiring again. Works the same on SQLite and
PostgreSQL: a conditional UPDATE, else an INSERT that the primary key makes fail for all but one worker.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.tables import Lease


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
