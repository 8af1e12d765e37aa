"""The training queue in the database, and what asks for a run.

At most one `training_runs` row is queued and one is running (a unique index says so, across processes and
hosts): a request while one is queued merges into it (its trigger becomes e.g. "labels+manual"), so a restart
neither loses nor repeats one. Triggers:

- labels: `min_new_labels` new or changed labelled images since the last run started;
- schedule: the daily `at` time (local clock) has passed today, no scheduled run was requested since, and at
  least one labelled image changed since the last run (an unchanged dataset is not trained again);
- manual: `coverwatch train`.

An audit (`coverwatch audit`, or `training.audit_folds` after each training run) is a run of kind "audit" in
the same table, with its own queue of one: a training request never merges into an audit, nor the reverse.

Example:
    >>> request_training(engine, "manual")
    (4, False)
    >>> request_training(engine, "labels")   # merged into run 4
    (4, True)
"""

from __future__ import annotations

import logging
from datetime import datetime, time as dtime, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from pipeline.settings import TrainingSettings
from storage.db import session_scope
from storage.tables import ModelVersion, Sample, TrainingRun

log = logging.getLogger(__name__)


def request_training(engine, trigger: str, *, now: datetime | None = None, kind: str = "train",
                     folds: int | None = None, epochs: int | None = None) -> tuple[int, bool]:
    """Queue a run of `kind`, or merge into the queued one of that kind; returns (run id, merged).

    `now` (aware) stamps a new run's request time: the clock `due_trigger` decided with, so a scheduled run
    counts for the slot it was asked for. `folds` and `epochs` (audits) override the config's for this run."""
    for _ in range(3):
        try:
            with session_scope(engine, write=True) as s:
                queued = s.scalar(select(TrainingRun).where(TrainingRun.state == "queued", TrainingRun.kind == kind))
                if queued is not None:
                    parts = queued.trigger.split("+")
                    if trigger not in parts:
                        queued.trigger = "+".join([*parts, trigger])[:32]
                    queued.folds, queued.epochs = folds or queued.folds, epochs or queued.epochs
                    return queued.id, True
                run = TrainingRun(state="queued", trigger=trigger, kind=kind, folds=folds, epochs=epochs)
                if now is not None:
                    run.requested_at = now.astimezone(timezone.utc)
                s.add(run)
                s.flush()
                log.info("%s run %d queued (%s)", "training" if kind == "train" else kind, run.id, trigger)
                return run.id, False
        except IntegrityError:  # another process queued one between our read and write: merge into it
            continue
    raise RuntimeError("could not queue a training run")  # pragma: no cover - three lost races in a row


def due_trigger(s, settings: TrainingSettings, now: datetime) -> str | None:
    """The trigger that asks for a run now, or None; `now` is an aware wall-clock time."""
    if s.scalar(select(TrainingRun.id).where(TrainingRun.state == "queued", TrainingRun.kind == "train")) is not None:
        return None  # the queued run will train on the newest dataset anyway
    changed = changed_images(s)
    if changed >= settings.min_new_labels:
        return "labels"
    if settings.at and changed > 0 and _schedule_due(s, settings.at, now):
        return "schedule"
    return None


def changed_images(s) -> int:
    """Labelled images added or re-labelled since the last run started (all of them before the first run)."""
    last = s.scalar(select(func.max(func.coalesce(TrainingRun.started_at, TrainingRun.requested_at)))
                    .where(TrainingRun.kind == "train"))  # an audit trains no model: it resets nothing
    q = select(func.count(func.distinct(Sample.image_sha256)))
    if last is not None:
        q = q.where(Sample.created_at > last)
    return s.scalar(q) or 0


def _schedule_due(s, at: str, now: datetime) -> bool:
    local = now.astimezone()
    hh, mm = (int(x) for x in at.split(":"))
    today_at = datetime.combine(local.date(), dtime(hh, mm), tzinfo=local.tzinfo)
    if local < today_at:
        return False
    since = today_at.astimezone(timezone.utc)
    done = s.scalar(select(TrainingRun.id).where(TrainingRun.kind == "train",
                                                 TrainingRun.trigger.contains("schedule"),
                                                 TrainingRun.requested_at >= since).limit(1))
    return done is None


def run_summary(engine, run_id: int) -> dict:
    """One run as plain values: state, version, epoch/epochs, losses, eta, attempts, the model's decision."""
    with session_scope(engine) as s:
        run = s.get(TrainingRun, run_id)
        mv = s.get(ModelVersion, run.model_version_id) if run.model_version_id else None
        return {"id": run.id, "kind": run.kind, "state": run.state, "trigger": run.trigger, "version": run.version,
                "fold": run.fold, "folds": run.folds,
                "epoch": run.epoch, "epochs": run.epochs, "losses": run.losses, "eta_seconds": run.eta_seconds,
                "error": run.error, "metrics": run.metrics, "model_state": mv.state if mv else None,
                "decision": mv.decision if mv else None,
                "attempts": [{"n": a.n, "model": a.model, "imgsz": a.imgsz, "batch": a.batch, "outcome": a.outcome,
                              "reason": a.reason} for a in run.attempts]}
