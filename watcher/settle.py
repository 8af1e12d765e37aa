"""When is a file complete? Stable size and mtime for `settle` seconds, and closed by its writer when
inotify told us it was being written.

`Settler` is pure bookkeeping with an injected clock and stat, so it is tested without any watcher.
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    size: int
    mtime_ns: int
    stable_since: float
    opens: int = 0  # inotify opens minus closes seen while tracked: > 0 means a writer may still be at it
    not_before: float = 0.0  # back-off after a failed attempt


class Settler:
    """Tracks candidate files and hands out the ones that are complete.

    >>> s = Settler(settle=1.0)
    >>> s.hint("/in/a.jpg", "moved", now=0.0)
    >>> s.ready(now=1.5)
    ['/in/a.jpg']
    """

    def __init__(self, settle: float, *, close_grace: float | None = None, stat: Callable = os.lstat):
        self.settle = settle
        # A lost close-write event (inotify overflow) must not block a file forever.
        self.close_grace = close_grace if close_grace is not None else max(60.0, 30 * settle)
        self._stat = stat
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, path: str) -> bool:
        return path in self._entries

    def hint(self, path: str, kind: str, now: float) -> None:
        """Record an event (or a scan finding: kind "scan") for `path`.

        Opens and closes only count for files already tracked: a reader opening a file we are not waiting
        for (our own hashing, a thumbnailer) says nothing about new content.
        """
        entry = self._entries.get(path)
        if kind == "deleted" or (entry is None and kind in ("opened", "closed", "closed_no_write")):
            if kind == "deleted":
                self._entries.pop(path, None)
            return
        st = self._safe_stat(path)
        if st is None:
            self._entries.pop(path, None)
            return
        size, mtime, regular = st
        if entry is None:
            entry = self._entries[path] = _Entry(size, mtime, now)
        if kind == "opened" and regular:
            entry.opens += 1
        elif kind in ("closed", "closed_no_write"):
            entry.opens = max(0, entry.opens - 1)
        elif kind == "moved":
            entry.opens = 0  # a rename is atomic: whatever wrote it is done with this name
        if (size, mtime) != (entry.size, entry.mtime_ns):
            entry.size, entry.mtime_ns, entry.stable_since = size, mtime, now
        self._schedule(path, max(entry.stable_since + self.settle, entry.not_before))

    def retry_later(self, path: str, delay: float, now: float) -> None:
        """Put a file back after a transient failure (disk full, database locked)."""
        st = self._safe_stat(path)
        if st is None:
            return
        self._entries[path] = _Entry(st[0], st[1], now, not_before=now + delay)
        self._schedule(path, now + delay)

    def ready(self, now: float, limit: int | None = None) -> list[str]:
        """Pop up to `limit` complete files, oldest first."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(out) < limit):
            due, path = heapq.heappop(self._heap)
            entry = self._entries.get(path)
            if entry is None or due < max(entry.stable_since + self.settle, entry.not_before):
                continue  # stale heap item: the entry was rescheduled later
            if self._check(path, entry, now):
                del self._entries[path]
                out.append(path)
        return out

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def _check(self, path: str, entry: _Entry, now: float) -> bool:
        st = self._safe_stat(path)
        if st is None:
            del self._entries[path]
            return False
        if st[:2] != (entry.size, entry.mtime_ns):
            entry.size, entry.mtime_ns, entry.stable_since = st[0], st[1], now
            self._schedule(path, now + self.settle)
            return False
        if entry.opens > 0 and now - entry.stable_since < self.close_grace:
            # Still open for writing: a paused writer. Look again later; a close-write reschedules sooner.
            self._schedule(path, now + max(self.settle, 0.5))
            return False
        return True

    def _schedule(self, path: str, when: float) -> None:
        heapq.heappush(self._heap, (when, path))

    def _safe_stat(self, path: str) -> tuple[int, int, bool] | None:
        try:
            st = self._stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode)
