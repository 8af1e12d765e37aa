"""The shape every periodic job has (huey's consumer and frigate's maintainer threads are the models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.clock import utcnow  # noqa: F401 - the jobs' wall clock, re-exported

if TYPE_CHECKING:
    from watcher.daemon import Daemon


class Job:
    """A piece of the daemon's work that comes round again. `run(now)` sets `next_at`, the monotonic time it
    is next due; `None` for a job that no timer of ours wakes (a flag, the wall clock, another object's
    timer): the loop looks at it every pass anyway, at most MAX_SLEEP apart. A `next_at` in the past must
    mean due: the daemon's wait sleeps until the earliest one, and would not sleep at all.

    The job reads the daemon's state when it runs (`d.cfg` changes on SIGHUP).
    """

    next_at: float | None = 0.0  # due at the first pass

    def __init__(self, daemon: Daemon):
        self.d = daemon

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

    def run(self, now: float) -> None:
        raise NotImplementedError

