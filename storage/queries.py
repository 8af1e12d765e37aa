"""Read-side queries shared by the CLI, the daemon and the report."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.tables import File, FileState, ModelVersion, TrainingRun, Worker

HEARTBEAT_STALE = timedelta(seconds=30)


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns; they were stored as UTC.
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def state_counts(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in FileState}
    for state, n in session.execute(select(File.state, func.count()).group_by(File.state)):
        counts[state] = n
    return counts


def duplicate_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(File.duplicate_of.is_not(None))) or 0


def champion(session: Session) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.state == "champion").order_by(ModelVersion.promoted_at.desc())
    )


def active_training(session: Session) -> TrainingRun | None:
    return session.scalar(
        select(TrainingRun)
        .where(TrainingRun.state.in_(("queued", "running")))
        .order_by(TrainingRun.state.desc(), TrainingRun.requested_at)
    )


def live_workers(session: Session, now: datetime | None = None) -> list[Worker]:
    now = now or datetime.now(timezone.utc)
    rows = session.scalars(select(Worker).where(Worker.stopped_at.is_(None))).all()
    return [w for w in rows if now - _aware(w.heartbeat_at) <= HEARTBEAT_STALE]


def oldest_waiting(session: Session) -> datetime | None:
    waiting = (FileState.pending.value, FileState.awaiting_model.value, FileState.awaiting_partner.value)
    return _aware(session.scalar(select(func.min(File.created_at)).where(File.state.in_(waiting))))


def status_summary(session: Session, now: datetime | None = None) -> dict:
    """The figures behind `coverwatch status --json`."""
    now = now or datetime.now(timezone.utc)
    counts = state_counts(session)
    champ = champion(session)
    run = active_training(session)
    workers = live_workers(session, now)
    oldest = oldest_waiting(session)
    return {
        "pending": counts[FileState.pending.value],
        "processed": counts[FileState.processed.value],
        "quarantined": counts[FileState.quarantined.value],
        "awaiting_model": counts[FileState.awaiting_model.value],
        "awaiting_partner": counts[FileState.awaiting_partner.value],
        "duplicates": duplicate_count(session),
        "queue_depth": sum(w.queue_depth for w in workers),
        "oldest_waiting_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "champion": champ.version if champ else None,
        "champion_metrics": champ.metrics if champ else None,
        "training": None
        if run is None
        else {"state": run.state, "epoch": run.epoch, "epochs": run.epochs, "trigger": run.trigger},
        "daemon": {
            "running": bool(workers),
            "workers": [
                {
                    "host": w.host,
                    "pid": w.pid,
                    "role": w.role,
                    "uptime_seconds": round((now - _aware(w.started_at)).total_seconds(), 1),
                    "last_rescan": _aware(w.last_rescan_at).isoformat() if w.last_rescan_at else None,
                }
                for w in workers
            ],
        },
    }
