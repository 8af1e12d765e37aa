"""Watchdog plumbing: which observer, which names count, and a handler that only enqueues.

Events are hints. The daemon's rescans are what guarantee that nothing is missed.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

# Mount types that deliver no inotify events for changes made by other hosts.
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
     "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "davfs", "fuse.davfs2"}
)


class NameFilter:
    """Does this file name count yet? In-progress uploads don't, until they are renamed.

    >>> NameFilter()("cover.jpg"), NameFilter()("cover.jpg.part"), NameFilter()(".~lock")
    (True, False, False)
    """

    temp_suffixes: tuple[str, ...] = (".part", ".tmp", ".crdownload", "~", ".partial", ".download")

    def __call__(self, name: str) -> bool:
        return not (name.startswith(".") or name.lower().endswith(self.temp_suffixes))


@dataclass(frozen=True, slots=True)
class Hint:
    """Something may have happened at `path`.

    kind: created | modified | opened | closed | closed_no_write | moved | deleted | dir (scan this folder).
    """

    kind: str
    path: str


class EnqueueHandler(FileSystemEventHandler):
    """Turns watchdog events into Hints on a queue. Never does work, never raises."""

    def __init__(self, hints: queue.SimpleQueue):
        self.hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._enqueue(event)
        except Exception:  # noqa: BLE001 - a handler that raises kills the observer thread
            log.exception("could not enqueue %r", event)

    def _enqueue(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if event.is_directory:
            # A folder moved or created in brings files that get no events of their own: scan it.
            if kind in ("created", "moved"):
                self.hints.put(Hint("dir", os.fsdecode(event.dest_path or event.src_path)))
            return
        if kind == "moved":
            self.hints.put(Hint("deleted", os.fsdecode(event.src_path)))
            self.hints.put(Hint("moved", os.fsdecode(event.dest_path)))
        elif kind in ("created", "modified", "opened", "closed", "closed_no_write", "deleted"):
            self.hints.put(Hint(kind, os.fsdecode(event.src_path)))


def mount_fstype(path: Path, partitions: Iterable | None = None) -> str | None:
    """The file system type of the mount that holds `path`, or None if unknown. `partitions` (tests) stands in
    for psutil.disk_partitions(all=True): every mount, network ones included, in mount order."""
    try:
        parts = psutil.disk_partitions(all=True) if partitions is None else partitions
    except (OSError, psutil.Error):
        return None
    target = str(Path(path).resolve())
    best, best_type = "", None
    for part in parts:  # the longest mount point that holds the path; the later one of equals (mounted over)
        inside = target == part.mountpoint or target.startswith(part.mountpoint.rstrip("/") + "/")
        if inside and len(part.mountpoint) >= len(best):
            best, best_type = part.mountpoint, part.fstype
    return best_type


def wants_polling(setting: bool | str, paths: list[Path], fstype=mount_fstype) -> bool:
    """`watch.polling`: True/False as given; auto polls when any watched folder is on a network file system."""
    if setting in (True, False):
        return setting
    for p in paths:
        kind = fstype(p)
        if kind and (kind in NETWORK_FS or kind.split(".")[0] in NETWORK_FS):
            log.info("%s is on %s (a network file system): using the polling observer", p, kind)
            return True
    return False


def start_observer(paths: list[Path], hints: queue.SimpleQueue, *, polling: bool, poll_interval: float) -> BaseObserver:
    """Start watching `paths` recursively; every event becomes a Hint on `hints`."""
    observer: BaseObserver = PollingObserver(timeout=poll_interval) if polling else Observer()
    handler = EnqueueHandler(hints)
    for p in paths:
        observer.schedule(handler, str(p), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
