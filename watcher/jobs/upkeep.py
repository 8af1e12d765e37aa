"""What follows from the files taken: labelled files whose partner never came, the managed dataset, the
Excel report, and the training queue. Each logs its failures and never stops the daemon."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.exc import OperationalError

from pipeline.labels.dataset import build_dataset
from pipeline.intake.labelled import expire_partners
from storage.db import session_scope
from storage.leases import acquire_lease
from watcher.config import dataset_options, review_options, thumbnail_options
from watcher.jobs.base import Job, utcnow

log = logging.getLogger(__name__)

EXPIRE_SECONDS = 1.0  # how often labelled files waiting for a partner are checked for their timeout
DATASET_REBUILD_SECONDS = 3.0  # at most one dataset rebuild this often, and only after labels changed


class LabelledUpkeep(Job):
    """Decide for labelled files whose partner never came; rebuild the dataset when labels changed."""

    def __init__(self, daemon):
        super().__init__(daemon)
        self.next_expire = 0.0
        self.next_dataset = 0.0
        self.labels_changed = True  # build at start when the labels differ from the last dataset

    @property
    def next_at(self) -> float:
        return min(self.next_expire, self.next_dataset if self.labels_changed else float("inf"))

    def due(self, now: float) -> bool:
        return now >= self.next_at and not self.d.stop.is_set()  # SIGTERM is honoured between steps

    def run_now(self, now: float) -> None:
        """Batch mode, at the end of its pass: the timeouts of files left waiting by earlier runs, and a
        current dataset."""
        self.next_expire = self.next_dataset = 0.0
        if not self.d.stop.is_set():
            self.run(now)

    def run(self, now: float) -> None:
        d = self.d
        try:
            if now >= self.next_expire:
                self.next_expire = now + EXPIRE_SECONDS
                self._expire()
            if self.labels_changed and now >= self.next_dataset and not d.stop.is_set():
                self.next_dataset = now + DATASET_REBUILD_SECONDS
                build_dataset(d.engine, d.cfg.home, d.cfg.path("dataset"), dataset_options(d.cfg))
                self.labels_changed = False
        except (OSError, OperationalError) as exc:
            log.warning("labelled upkeep failed (%s); trying again soon", exc)
        except Exception:  # noqa: BLE001 - a bug here must not stop the daemon; the next change retries
            log.exception("labelled upkeep failed")
            self.labels_changed = False

    def _expire(self) -> None:
        d, w = self.d, self.d.cfg.watch
        report = expire_partners(d.engine, d.layout, d.roots["labeled"], pair_timeout=w.pair_timeout_seconds,
                                 max_pixels=w.max_pixels, class_folder_grace=d.intake.class_folder_grace(),
                                 max_boxes=w.max_boxes, review=review_options(d.cfg))
        self.labels_changed |= report.processed > 0


class Report(Job):
    """Write the Excel report every reports.every_minutes, counted from the last one written (by any run).

    A failure is logged and tried again at the next period; it never stops the loop.
    """

    next_at = None  # the wall clock decides (the schedule outlives restarts); minutes apart, a pass is close enough

    def __init__(self, daemon):
        super().__init__(daemon)
        self.next_report: datetime | None = None

    def due(self, now: float) -> bool:
        return self.next_report is None or utcnow() >= self.next_report

    def run(self, now: float) -> None:
        from storage.queries import last_report_time

        d, wall = self.d, utcnow()
        every = timedelta(minutes=d.cfg.reports.every_minutes)
        try:
            if self.next_report is None:
                with session_scope(d.engine) as s:
                    last = last_report_time(s)
                if last is not None and wall < last + every:
                    self.next_report = last + every
                    return
            if self._hold_lease(every):
                self._publish(wall)
        except Exception:  # noqa: BLE001 - a report is never worth stopping the daemon for
            log.exception("the Excel report could not be written; trying again in %s minutes",
                          d.cfg.reports.every_minutes)
        self.next_report = wall + every

    def _hold_lease(self, every: timedelta) -> bool:
        """Several workers share one database: only the lease holder writes the report this period."""
        with session_scope(self.d.engine) as s:
            return acquire_lease(s, "report", self.d.worker_id, every.total_seconds() * 0.9)

    def _publish(self, wall: datetime) -> None:
        from pipeline.report.workbook import publish_report  # XlsxWriter: loaded when first needed

        cfg = self.d.cfg
        publish_report(self.d.engine, cfg.path("reports"), home=cfg.home, keep=cfg.reports.keep,
                       low_confidence=cfg.model.review_below, labels=dataset_options(cfg), now=wall,
                       review=review_options(cfg), thumbnails=thumbnail_options(cfg))


class Training(Job):
    """Serve the training queue (pipeline.training.supervisor: triggers, one run at a time) on training roles, and
    re-classify recent images after a promotion on inference roles.

    Not in batch mode (`coverwatch process`, no observer): it would only start a run to stop it at exit.
    """

    next_at = None  # the supervisor keeps its own poll interval

    def __init__(self, daemon):
        super().__init__(daemon)
        self.supervisor = None  # pipeline.training.supervisor.TrainingSupervisor, made on the first run
        self._cfg = None

    def due(self, now: float) -> bool:
        d = self.d
        if self.supervisor is None and d.observer is None and d.does_inference:
            return False
        return d.does_training or bool(d.cfg.training.reclassify_days)

    def run(self, now: float) -> None:
        from pipeline.training.supervisor import TrainingSupervisor
        from watcher.config import training_settings

        d = self.d
        try:
            if self.supervisor is None:
                self.supervisor = TrainingSupervisor(d.engine, training_settings(d.cfg), database_url=d.cfg.database_url)
                self._cfg = d.cfg
            elif self._cfg is not d.cfg:  # reloaded: new thresholds apply from the next tick
                self.supervisor.settings, self._cfg = training_settings(d.cfg), d.cfg
            self.supervisor.tick(now, step=d.step if d.does_inference else None, serve=d.does_training)
        except OperationalError as exc:
            log.warning("training check could not use the database (%s); trying again soon", exc.orig)
        except Exception:  # noqa: BLE001 - a training problem must never stop the daemon
            log.exception("training check failed")

    def close(self) -> None:
        """SIGTERM the run: it resumes from its last.pt on the next start."""
        if self.supervisor is not None:
            self.supervisor.shutdown()
