"""Read-side queries shared by the CLI, the daemon and the report."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from storage.clock import as_utc
from storage.tables import (
    CORRECTION_FOLDER,
    Detection,
    File,
    FileState,
    ModelVersion,
    Prediction,
    Report,
    TrainingRun,
    Worker,
)

HEARTBEAT_STALE = timedelta(seconds=30)


def state_counts(session: Session) -> dict[str, int]:
    """Files per state; the rows corrections made for archived images are no files anyone dropped."""
    counts = {s.value: 0 for s in FileState}
    dropped = File.folder != CORRECTION_FOLDER
    for state, n in session.execute(select(File.state, func.count()).where(dropped).group_by(File.state)):
        counts[state] = n
    return counts


def duplicate_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(File.duplicate_of.is_not(None))) or 0


def near_duplicate_count(session: Session) -> int:
    """Files that look like an earlier one (a near-duplicate: a re-saved or resized copy of a cover)."""
    return session.scalar(select(func.count()).where(File.looks_like.is_not(None))) or 0


def champion(session: Session) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.state == "champion").order_by(ModelVersion.promoted_at.desc())
    )


def active_training(session: Session, kind: str = "train") -> TrainingRun | None:
    return session.scalar(
        select(TrainingRun)
        .where(TrainingRun.state.in_(("queued", "running")), TrainingRun.kind == kind)
        .order_by(TrainingRun.state.desc(), TrainingRun.requested_at)
    )


def last_finished_training(session: Session) -> tuple[TrainingRun, ModelVersion | None] | None:
    """The newest run that ended (done or failed) with its model version, if it made one."""
    row = session.execute(
        select(TrainingRun, ModelVersion).outerjoin(ModelVersion, ModelVersion.id == TrainingRun.model_version_id)
        .where(TrainingRun.state.in_(("done", "failed")), TrainingRun.kind == "train")
        .order_by(TrainingRun.id.desc()).limit(1)).first()
    return None if row is None else (row[0], row[1])


def training_outcome(run: TrainingRun, mv: ModelVersion | None) -> dict:
    """A finished run as plain values: failed with its error's first line, or done with its model's verdict."""
    error = (run.error or "").strip()
    return {"run": run.id, "version": run.version, "state": run.state, "trigger": run.trigger,
            "error": error.splitlines()[0] if error else (None if run.state == "done" else "failed"),
            "finished_at": as_utc(run.finished_at).isoformat() if run.finished_at else None,
            "model_state": mv.state if mv else None, "decision": mv.decision if mv else None}


def live_workers(session: Session, now: datetime | None = None) -> list[Worker]:
    now = now or datetime.now(timezone.utc)
    rows = session.scalars(select(Worker).where(Worker.stopped_at.is_(None))).all()
    return [w for w in rows if now - as_utc(w.heartbeat_at) <= HEARTBEAT_STALE]


def silent_workers(session: Session, now: datetime | None = None) -> list[Worker]:
    """Workers of this host whose heartbeat is stale but whose process still runs: alive, but their writes do not
    reach the database (a full disk). Other hosts' processes cannot be looked at."""
    from storage.leases import worker_process_alive

    now = now or datetime.now(timezone.utc)
    rows = session.scalars(select(Worker).where(Worker.stopped_at.is_(None), Worker.host == socket.gethostname()))
    return [w for w in rows if now - as_utc(w.heartbeat_at) > HEARTBEAT_STALE and worker_process_alive(w)]


def move_pending(session: Session) -> dict[str, int]:
    """Per final state, the files decided and committed but still in their drop folder (the archive disk is
    full, say): finish_moves will take them there."""
    unmoved = File.final_path.is_not(None) & File.moved_at.is_(None) & File.location.is_not(None)
    rows = session.execute(select(File.state, func.count()).where(unmoved).group_by(File.state))
    return dict(rows.all())


def oldest_waiting(session: Session) -> datetime | None:
    waiting = (FileState.pending.value, FileState.awaiting_model.value, FileState.awaiting_partner.value)
    return as_utc(session.scalar(select(func.min(File.created_at)).where(File.state.in_(waiting))))


def status_summary(session: Session, now: datetime | None = None) -> dict:
    """The figures behind `coverwatch status --json`."""
    now = now or datetime.now(timezone.utc)
    champ = champion(session)
    run = active_training(session)
    audit = active_training(session, "audit")
    last_report = session.scalar(select(Report).order_by(Report.created_at.desc()))
    last_run = last_finished_training(session)
    workers = live_workers(session, now)
    oldest = oldest_waiting(session)
    return {
        **_file_counts(session),
        "queue_depth": sum(w.queue_depth for w in workers),
        "oldest_waiting_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "last_report": None
        if last_report is None
        else {"path": last_report.path, "time": as_utc(last_report.created_at).isoformat()},
        "champion": champ.version if champ else None,
        "champion_metrics": champ.metrics if champ else None,
        "training": None
        if run is None
        else {"state": run.state, "epoch": run.epoch, "epochs": run.epochs, "trigger": run.trigger,
              "version": run.version, "losses": run.losses, "eta_seconds": run.eta_seconds},
        "last_training": None if last_run is None else training_outcome(*last_run),
        "audit": None
        if audit is None
        else {"state": audit.state, "fold": audit.fold, "folds": audit.folds, "epoch": audit.epoch,
              "epochs": audit.epochs, "version": audit.version, "trigger": audit.trigger},
        "daemon": _daemon_summary(workers, silent_workers(session, now), now),
    }


def _file_counts(session: Session) -> dict[str, int]:
    counts = state_counts(session)
    unmoved = move_pending(session)
    return {
        "pending": counts[FileState.pending.value],
        # processed and quarantined: those in their final place; move_pending: decided, still in the drop folder
        "processed": counts[FileState.processed.value] - unmoved.get(FileState.processed.value, 0),
        "quarantined": counts[FileState.quarantined.value] - unmoved.get(FileState.quarantined.value, 0),
        "move_pending": unmoved.get(FileState.processed.value, 0),
        "quarantine_move_pending": unmoved.get(FileState.quarantined.value, 0),
        "awaiting_model": counts[FileState.awaiting_model.value],
        "awaiting_partner": counts[FileState.awaiting_partner.value],
        "duplicates": duplicate_count(session),
        "near_duplicates": near_duplicate_count(session),
    }


def _daemon_summary(workers: list[Worker], silent: list[Worker], now: datetime) -> dict:
    def age(t: datetime) -> float:
        return round((now - as_utc(t)).total_seconds(), 1)

    return {
        "running": bool(workers or silent),
        # Alive by the process table, but their heartbeats stopped reaching the database.
        "cannot_write": [{"host": w.host, "pid": w.pid, "role": w.role, "heartbeat_age_seconds": age(w.heartbeat_at)}
                         for w in silent],
        "workers": [{"host": w.host, "pid": w.pid, "role": w.role, "uptime_seconds": age(w.started_at),
                     "last_rescan": as_utc(w.last_rescan_at).isoformat() if w.last_rescan_at else None}
                    for w in workers],
    }


# -- the Excel report: statements streamed in chunks, and small aggregates --------------------------------------


def _latest_prediction_ids():
    """The newest prediction of each file: after a re-classification, the older one is history."""
    return select(func.max(Prediction.id)).group_by(Prediction.file_id)


def latest_predictions_stmt():
    """One row per classified file: id, original_name, predicted_class, confidence, model_version, created_at,
    final_path, state, and the earlier file it looks like (looks_like, its original_name, looks_like_bits; None
    for most), sha256 (the report's thumbnail cache key). Ordered by prediction id, for streaming."""
    earlier = aliased(File)
    return (
        select(Prediction.id, File.original_name, Prediction.predicted_class, Prediction.confidence,
               Prediction.model_version, Prediction.created_at, File.final_path, File.state, File.looks_like,
               earlier.original_name, File.looks_like_bits, File.sha256)
        .join(File, File.id == Prediction.file_id)
        .outerjoin(earlier, earlier.id == File.looks_like)
        .where(Prediction.id.in_(_latest_prediction_ids()))
        .order_by(Prediction.id)
    )


def latest_detections_stmt():
    """One row per box of the latest predictions: prediction_id, original_name, class_name, confidence, x1, y1,
    x2, y2."""
    return (
        select(Detection.prediction_id, File.original_name, Detection.class_name, Detection.confidence,
               Detection.x1, Detection.y1, Detection.x2, Detection.y2)
        .join(Prediction, Prediction.id == Detection.prediction_id)
        .join(File, File.id == Prediction.file_id)
        .where(Detection.prediction_id.in_(_latest_prediction_ids()))
        .order_by(Detection.id)
    )


def quarantined_stmt():
    """Quarantined files: id, original_name, reason, detail, processed_at, updated_at, final_path, sha256."""
    return (
        select(File.id, File.original_name, File.reason, File.detail, File.processed_at, File.updated_at,
               File.final_path, File.sha256)
        .where(File.state == FileState.quarantined.value)
        .order_by(File.id)
    )


def newest_floor(conn, stmt, n: int) -> int | None:
    """The first column's value in the n-th last row of `stmt` (a statement ordered by that column, as the ones
    above): the rows from it on are the newest n. None when `stmt` has no rows."""
    key = stmt.selected_columns[0]
    newest = stmt.order_by(None).order_by(key.desc()).limit(n).subquery()
    return conn.scalar(select(func.min(newest.c[0])))


def confidence_histogram(session: Session, bins: int = 10) -> list[int]:
    """How many of the latest predictions fall in each of `bins` equal confidence bins, [0, 1/bins) first; the
    last bin holds 1.0. Counted in the database (a CASE per bin: portable, where FLOOR and CAST differ)."""
    conf = Prediction.confidence
    bin_of = case(*((conf < (i + 1) / bins, i) for i in range(bins - 1)), else_=bins - 1)
    rows = session.execute(select(bin_of, func.count()).where(Prediction.id.in_(_latest_prediction_ids()),
                                                              conf.is_not(None)).group_by(bin_of))
    out = [0] * bins
    for i, n in rows:
        out[int(i)] = n
    return out


def files_by_hour(session: Session) -> list[tuple[datetime, str, str, int]]:
    """(hour in UTC, state, folder, files) for the files processed or quarantined, grouped in the database by the
    hour they were decided: few rows, whatever the zone the caller counts days in."""
    stamp = func.coalesce(File.processed_at, File.updated_at)
    if session.get_bind().dialect.name == "sqlite":
        hour = func.strftime("%Y-%m-%d %H:00:00", stamp)
    else:
        hour = func.date_trunc("hour", stamp)
    done = (FileState.processed.value, FileState.quarantined.value)
    rows = session.execute(select(hour, File.state, File.folder, func.count()).where(File.state.in_(done))
                           .group_by(hour, File.state, File.folder))
    return [(_utc_hour(h), state, folder, n) for h, state, folder, n in rows if h is not None]


def _utc_hour(value) -> datetime:
    if isinstance(value, str):  # SQLite's strftime
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    return as_utc(value)


def report_counts(session: Session) -> dict:
    """Sizes and time span of what the report covers."""
    latest = _latest_prediction_ids().subquery()
    first, last = session.execute(select(func.min(Prediction.created_at), func.max(Prediction.created_at))).one()
    return {
        "predictions": session.scalar(select(func.count()).select_from(latest)) or 0,
        "prediction_history": session.scalar(select(func.count(Prediction.id))) or 0,
        "detections": session.scalar(
            select(func.count(Detection.id)).where(Detection.prediction_id.in_(_latest_prediction_ids()))) or 0,
        "first_prediction": as_utc(first),
        "last_prediction": as_utc(last),
    }


def class_counts(session: Session, low_confidence: float) -> dict[str, dict[str, int]]:
    """Per class name: predictions and low_confidence (latest predictions), detections (boxes of the latest
    predictions). The labels' counts are `pipeline.labels.quality`'s."""
    out: dict[str, dict[str, int]] = {}

    def put(key: str, rows) -> None:
        for name, n in rows:
            if name is not None:
                out.setdefault(name, {})[key] = n

    latest = Prediction.id.in_(_latest_prediction_ids())
    put("predictions", session.execute(
        select(Prediction.predicted_class, func.count()).where(latest).group_by(Prediction.predicted_class)))
    put("low_confidence", session.execute(
        select(Prediction.predicted_class, func.count()).where(latest, Prediction.confidence < low_confidence)
        .group_by(Prediction.predicted_class)))
    put("detections", session.execute(
        select(Detection.class_name, func.count()).where(Detection.prediction_id.in_(_latest_prediction_ids()))
        .group_by(Detection.class_name)))
    return out


def quarantine_reasons(session: Session) -> dict[str, int]:
    rows = session.execute(select(File.reason, func.count()).where(File.state == FileState.quarantined.value)
                           .group_by(File.reason).order_by(func.count().desc()))
    return {reason or "unknown": n for reason, n in rows}


def training_runs_with_models(session: Session) -> list[tuple[TrainingRun, ModelVersion | None]]:
    return list(session.execute(
        select(TrainingRun, ModelVersion).outerjoin(ModelVersion, ModelVersion.id == TrainingRun.model_version_id)
        .where(TrainingRun.kind == "train").order_by(TrainingRun.requested_at, TrainingRun.id)))



def last_report_time(session: Session) -> datetime | None:
    return as_utc(session.scalar(select(func.max(Report.created_at))))
