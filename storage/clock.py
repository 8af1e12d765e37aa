"""UTC time for every layer: what is written to the database, and how it is read back."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import overload


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def as_utc(dt: datetime) -> datetime: ...
@overload
def as_utc(dt: None) -> None: ...
def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes even for timezone=True columns; they were stored as UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt
