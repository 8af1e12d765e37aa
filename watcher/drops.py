"""The daemon's main work: settled files from the drop folders through the pipeline, in bookkeeping batches,
the inbox first and labelled files on a budget per pass; a transient failure puts a file back with back-off."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.intake.core import Claim
from pipeline.intake.ingest import ingest_batch
from pipeline.intake.labelled import ingest_labelled
from watcher.config import review_options

if TYPE_CHECKING:
    from watcher.daemon import Daemon

INGEST_BATCH = 256  # files per bookkeeping transaction; the step batches its own model calls
LABELLED_PER_PASS = 64  # labelled files per loop pass: the rest wait for the next, so the inbox keeps flowing
MAX_BACKOFF = 60.0


class DropIntake:
    """Takes what the settle tracker says is complete. `batch`: `coverwatch process` takes the drop as it is
    (no grace for class folders) and counts in `finished` the files taken to a final or waiting state."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.batch = False
        self.failures: dict[str, int] = defaultdict(int)
        self.finished: set[str] | None = None  # batch mode: each file once, even when its batch is retried
        self._held: list[str] = []  # ready files of other folders, taken out while the inbox went on

    def run(self, now: float) -> int:
        """Every ready file, batch after batch, until none is ready or the daemon stops; how many were taken."""
        d = self.d
        taken, labelled, deferred = 0, 0, []
        while not d.stop.is_set():
            ready, self._held = self._held, []
            ready += d.settler.ready(now, limit=max(0, INGEST_BATCH - len(ready)))
            if not ready:
                break
            ready, later = self._labelled_budget(ready, LABELLED_PER_PASS - labelled)
            labelled += sum(1 for p in ready if self.folder_of(Path(p)) == "labeled")
            deferred += later
            d.database.check()
            taken += len(ready) + self._ingest(ready, now)
            now = d.clock()
            d.notifier.ping(now)  # busy is not hung: keep systemd's watchdog fed between batches
        for p in deferred + self._held:  # back in line after this pass: the next pass takes them
            d.settler.retry_later(p, d.settler.settle, now)
        self._held = []
        return taken

    def class_folder_grace(self) -> float | None:
        """A classify home takes a folder of images alone as a class folder once nothing arrived there for
        settle_seconds (a labelImg drop copied images first has its labels on disk by then); `process` takes
        the drop as it is. A detect home keeps waiting the pair timeout: a label is what it wants."""
        if self.d.cfg.task != "classify":
            return None
        return 0.0 if self.batch else self.d.cfg.watch.settle_seconds

    def folder_of(self, path: Path) -> str | None:
        for name, root in self.d.roots.items():
            if path.is_relative_to(root):
                return name
        return None

    def _labelled_budget(self, ready: list[str], budget: int) -> tuple[list[str], list[str]]:
        """Split off the labelled files past this pass's budget: a big labelled drop (decoding every image,
        parsing every label) must not hold the inbox back for long."""
        take, later = [], []
        for p in ready:
            if self.folder_of(Path(p)) == "labeled":
                (take if budget > 0 else later).append(p)
                budget -= 1
            else:
                take.append(p)
        return take, later

    def _ingest(self, ready: list[str], now: float) -> int:
        """The ready files, the inbox first; returns how many more inbox files were taken on the way."""
        d = self.d
        by_folder: dict[str, list[Path]] = defaultdict(list)
        for p in ready:
            by_folder[self.folder_of(Path(p))].append(Path(p))
        more = 0
        for folder, paths in sorted(by_folder.items(), key=lambda kv: kv[0] == "labeled"):  # the inbox first
            if folder is None or d.stop.is_set():
                continue
            if folder == "labeled":
                report = self._ingest_labelled(paths)
            else:
                chained = _Chain(self, folder, paths)
                report = ingest_batch(d.engine, d.layout, folder, d.roots[folder], paths, d.step,
                                      max_bytes=d.cfg.watch.max_bytes,
                                      claim=Claim(d.worker_id, d.cfg.watch.claim_seconds),
                                      near_bits=d.cfg.watch.near_duplicate_bits, more=chained.next)
                paths, more = chained.taken, more + len(chained.taken) - len(paths)
            self._settle_outcome(paths, {str(p) for p in report.retry}, now)
        return more

    def _ingest_labelled(self, paths: list[Path]):
        d, w = self.d, self.d.cfg.watch
        report = ingest_labelled(d.engine, d.layout, d.roots["labeled"], paths, max_bytes=w.max_bytes,
                                 max_pixels=w.max_pixels, pair_timeout=w.pair_timeout_seconds,
                                 class_folder_grace=self.class_folder_grace(), max_boxes=w.max_boxes,
                                 claim=Claim(d.worker_id, w.claim_seconds), review=review_options(d.cfg))
        d.upkeep.labels_changed |= report.processed > 0
        return report

    def _settle_outcome(self, paths: list[Path], retry: set[str], now: float) -> None:
        """Files to try again go back with a growing delay; the others are done with."""
        for p in map(str, paths):
            if p in retry:
                self.failures[p] += 1
                self.d.settler.retry_later(p, min(MAX_BACKOFF, 0.5 * 2 ** self.failures[p]), now)
            else:
                self.failures.pop(p, None)
                if self.finished is not None:
                    self.finished.add(p)


class _Chain:
    """The next inbox batch for `ingest_batch(more=...)`, asked for while the step computes the last images of
    the one before: the step goes from batch to batch without waiting for the next one's hashing and
    registering. Files of other folders are held for the intake's next round, and the chain ends there, so
    that a busy inbox does not hold the labelled drops back; a file already taken in this chain (written again
    since) goes back to the settle tracker."""

    def __init__(self, intake: DropIntake, folder: str, first: list[Path]):
        self.intake, self.folder, self.taken = intake, folder, list(first)
        self._seen = {str(p) for p in first}

    def next(self) -> list[Path]:
        i, d = self.intake, self.intake.d
        if d.stop.is_set() or i._held:  # labelled files came up meanwhile: their turn before more of the inbox
            return []
        d.database.check()  # a deleted database stops the intake here too (DatabaseLost)
        now = d.clock()
        d.notifier.ping(now)  # busy is not hung: keep systemd's watchdog fed between batches
        out = []
        for p in d.settler.ready(now, limit=INGEST_BATCH):
            if p in self._seen:
                d.settler.retry_later(p, d.settler.settle, now)
            elif i.folder_of(Path(p)) == self.folder:
                out.append(Path(p))
            else:
                i._held.append(p)
        self._seen.update(map(str, out))
        self.taken += out
        return out
