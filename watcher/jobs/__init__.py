"""The daemon's periodic jobs: each a small object with `due(now)` / `run(now)` that the loop goes over.

Scan (event drain, model watch, rescan), labelled upkeep, report, training, heartbeat and SIGHUP reload.
"""

from watcher.jobs.base import Job, utcnow
from watcher.jobs.health import DatabaseFile, Heartbeat
from watcher.jobs.reload import Reload
from watcher.jobs.scan import Drain, ModelWatch, Rescan
from watcher.jobs.upkeep import LabelledUpkeep, Report, Training

__all__ = ["DatabaseFile", "Drain", "Heartbeat", "Job", "LabelledUpkeep", "ModelWatch", "Reload", "Report",
           "Rescan", "Training", "run_due", "utcnow"]


def run_due(jobs: list[Job], now: float) -> None:
    """Run, in order, each job that is due."""
    for job in jobs:
        if job.due(now):
            job.run(now)
