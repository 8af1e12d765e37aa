"""The inbox: exactly-once bookkeeping for a batch of complete files: register, compute, commit, then move.

    A  register   one transaction: a row per file (or the row a crash left behind), claimed, cheap rejections
                  decided, copies of content seen before marked (pipeline.intake.core does the rest)
    B  step       the step computes outcomes, a part at a time (its own thread: StreamAhead)
    C  commit     one transaction per part: results, final states and destinations
    D  move       the part's files go to archive/ or quarantine/; one transaction records the moves

All transactions are the caller's thread's, one after the other. C and D of a part run while the step
computes the next part; A of the next batch (`more`) while it computes the last images of this one, so the
step goes from batch to batch without waiting. A crash between any two of these leaves either a `pending` row
with its file still in the drop folder (redone from B) or a committed destination (the move is finished at
start-up). Disk full or a locked database: the transaction rolls back, the files stay where they are, and the
caller retries later.

C also records each classified image's perceptual hash and, when an earlier inbox file looks like it
(`near_bits`, watch.near_duplicate_bits; 0: off), which one and how many bits apart (pipeline.intake.near). Such
a file is still classified and archived like any other: only byte-identical copies reuse a result.

C looks at each file again: one that is gone (deleted, or renamed: its new name is a new file) ends as
`vanished`; one whose size, mtime or ctime changed since it was hashed is not committed but started over (the
next pass registers its new content, the old row ends as `replaced`), so what is archived is what was
classified. A vanished or replaced row is never the "first copy" that a later file with its content defers to.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pipeline.images.decode import IMAGE_EXTENSIONS
from pipeline.errors import ModelUnavailable, Rejected
from pipeline.intake.near import look_alike
from pipeline.intake.core import (LIVE, BatchReport, Claim, Found, Layout, Registration, assign_destinations,
                                  claimable, gone, look_all, move, quarantine, register, transient, vanish)
from pipeline.inference.steps import Item, Result, Step, StreamAhead, store_results
from storage.clock import utcnow
from storage.db import session_scope
from storage.tables import File, FileState

log = logging.getLogger(__name__)

MAX_STEP_ATTEMPTS = 5
FINAL = (FileState.processed.value, FileState.quarantined.value)
UNSEEN = ("vanished", "replaced")  # quarantined before their content was looked at: nobody's first copy


def ingest_batch(
    engine, layout: Layout, folder: str, root: Path, paths: list[Path], step: Step, *, max_bytes: int,
    claim: Claim = Claim(), near_bits: int = 0, more: Callable[[], list[Path]] | None = None,
) -> BatchReport:
    """Take complete files under `root` (the `folder` drop folder) through to a final or waiting state;
    `near_bits`: how many bits of perceptual hash apart an image may be from an earlier one to look like it.
    `more()`: the paths of a next batch ([]: none), asked for once the step has at most LOOKAHEAD images
    left to compute; that batch is registered then and goes through the step right after this one, and so
    on. The report covers every batch.

    Example:
        >>> report = ingest_batch(engine, layout, "inbox", home / "inbox", [home / "inbox/a.jpg"], NoopStep(),
        ...                       max_bytes=10_000_000)
        >>> report.processed
        1
    """
    report = BatchReport()
    first = _register_batch(engine, layout, folder, root, paths, max_bytes, claim, report)
    if first is None or not first.found:
        return report
    batches = [first]
    with closing(StreamAhead(step, depth=2)) as feed:
        feed.add(first.items)
        asking = more is not None

        def ask() -> None:
            """The next batch once the step has at most LOOKAHEAD images left to compute."""
            nonlocal asking
            while asking and sum(x.unseen for x in batches) <= LOOKAHEAD:
                got = _register_batch(engine, layout, folder, root, more(), max_bytes, claim, report)
                if got is None:  # no paths, or a transient failure: no batch after these
                    asking = False
                    feed.end()
                else:
                    batches.append(got)
                    feed.add(got.items)

        if asking:
            ask()
        else:
            feed.end()
        for n, part in feed:
            b = batches[n]
            if part is None:  # the step is done with batch n: its files that were no work come last
                if b.unseen:
                    raise RuntimeError(f"step returned {len(b.work) - b.unseen} outcomes for {len(b.work)} items")
                files, outcomes = b.rest, {}
            elif isinstance(part, BaseException):  # a broken step must not stop the daemon
                if not isinstance(part, Exception):
                    raise part  # SystemExit and the like are not the step's failure
                log.error("step failed on a batch of %d files", b.unseen, exc_info=part)
                report.errors.append(f"{type(part).__name__}: {part}")
                files, outcomes = b.take([part] * b.unseen)
            else:
                files, outcomes = b.take(part)
            failure = files and _commit_part(engine, layout, folder, b, files, outcomes, report, claim, near_bits)
            if failure:  # None: committed; []: nothing to commit
                transient(report, [f.path for x in batches for f in x.found if id(f) not in x.committed], "commit",
                          failure)
                return report
            if asking:
                ask()
    return report


LOOKAHEAD = 64  # images still to compute when the next batch is registered (4 chunks of 16)


@dataclass
class _Batch:
    """A registered batch: its files with rows (`found`), those the step computes (`work`), in order."""

    found: list[Found]
    work: list[Found]
    ids: dict[int, int]  # id(Found) -> row id
    done: int = 0  # outcomes of `work` received so far
    committed: set[int] = field(default_factory=set)  # id(Found) of the files committed

    @property
    def items(self) -> list[Item]:
        return [Item(self.ids[id(f)], f.path, f.sha256) for f in self.work]

    @property
    def unseen(self) -> int:
        return len(self.work) - self.done

    @property
    def rest(self) -> list[Found]:
        """The files that were no work: duplicates, rows decided at registration. They go last, when every first
        copy of this batch (and of the batches before it) has its state."""
        work = {id(f) for f in self.work}
        return [f for f in self.found if id(f) not in work]

    def take(self, outcomes: list) -> tuple[list[Found], dict[int, object]]:
        """The next part of `work` and its outcomes by row id."""
        if len(outcomes) > self.unseen:
            raise RuntimeError(f"step returned {self.done + len(outcomes)} outcomes for {len(self.work)} items")
        files = self.work[self.done:self.done + len(outcomes)]
        self.done += len(outcomes)
        return files, {self.ids[id(f)]: o for f, o in zip(files, outcomes)}


def _register_batch(engine, layout: Layout, folder: str, root: Path, paths: list[Path], max_bytes: int,
                    claim: Claim, report: BatchReport) -> _Batch | None:
    """Phase A for `paths`: a _Batch (empty when none of them is there to take); None when there are no paths
    or registering failed (they are retried)."""
    if not paths:
        return None
    found = look_all(paths, root, max_bytes, report, allowed=IMAGE_EXTENSIONS)
    if not found:
        return _Batch([], [], {})
    try:
        with session_scope(engine, write=True) as s:
            register(s, layout, found, claim, _Copies(s, folder, found, layout.home, claim))
            found = [f for f in found if f.row is not None]
            work = [f for f in found if f.row.state == FileState.pending.value and f.row.duplicate_of is None]
            ids = {id(f): f.row.id for f in found}
    except (OperationalError, OSError) as exc:
        transient(report, [f.path for f in found], "register", exc)
        return None
    return _Batch(found, work, ids)


def _commit_part(engine, layout: Layout, folder: str, b: _Batch, files: list[Found], outcomes: dict, report,
                 claim: Claim, near_bits: int) -> Exception | None:
    """Phases C and D for a part of a batch; the error when the commit failed for now."""
    try:
        with session_scope(engine, write=True) as s:
            moving = [r.id for r in _commit(s, layout, folder, files, b.ids, outcomes, report, claim, near_bits)]
    except (OperationalError, OSError) as exc:
        return exc
    b.committed.update(id(f) for f in files)
    move(engine, layout.home, moving)
    return None


class _Copies(Registration):
    """The inbox registers each content once: a later file with the same content is a duplicate of the first
    and ends as it did, without a second inference. The same content twice in one batch: the later copies
    point at the first. Only the folder's own files count: a labelled image has no prediction to end as, so
    an inbox photo of it is classified."""

    def __init__(self, s: Session, folder: str, found: list[Found], home: Path, claim: Claim):
        super().__init__(folder)
        self.first_by_sha = _first_rows(s, folder, {f.sha256 for f in found if f.sha256}, home, claim)

    def carry_on(self, row: File, f: Found) -> bool:
        if row.sha256 != f.sha256 or f.rejected is not None:
            return False
        row.state = FileState.pending.value  # a crash or a wait left this row: carry on with it
        return True

    def new_row(self, row: File, f: Found) -> None:
        if f.sha256 in self.first_by_sha:
            row.duplicate_of = self.first_by_sha[f.sha256].id

    def inserted(self, row: File, f: Found) -> None:
        if f.sha256 and row.duplicate_of is None:
            first = self.first_by_sha.setdefault(f.sha256, row)
            if first is not row:
                row.duplicate_of = first.id  # a copy of a file earlier in this batch (flushed: it has an id)


def _first_rows(s: Session, folder: str, shas: set[str], home: Path, claim: Claim) -> dict[str, File]:
    """The first row of `folder` with each content, that later copies end as. A live one whose file is gone
    is resolved as vanished here and passed over: a file with its content is new, not a copy of nothing."""
    if not shas:
        return {}
    rows = s.scalars(
        select(File)
        .where(File.folder == folder, File.sha256.in_(list(shas)), File.duplicate_of.is_(None),
               File.state != FileState.requeued.value, ~((File.state == FileState.quarantined.value) & File.reason.in_(UNSEEN)))
        .order_by(File.id)
    )
    out: dict[str, File] = {}
    now = utcnow()
    for r in rows:
        if r.sha256 in out:
            continue
        if r.state in LIVE and gone(home, r) and claimable(r, claim):
            vanish(r, now)
            continue
        out[r.sha256] = r
    return out


def _changed(f: Found) -> str | None:
    """Whether the file is still what was hashed: None when it is, else "vanished" or "changed"."""
    try:
        st = os.lstat(f.path)
    except (FileNotFoundError, NotADirectoryError):
        return "vanished"
    except OSError:
        return None  # cannot tell: the move will say
    return "changed" if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (f.size, f.mtime_ns, f.ctime_ns) else None


def _commit(s, layout, folder, found, ids, outcomes, report, claim: Claim, near_bits: int) -> list[File]:
    """Phase C: results, final states and destinations, for the rows this worker still holds."""
    wanted = [ids[id(f)] for f in found]
    rows = {r.id: r for r in s.scalars(select(File).where(File.id.in_(wanted)).with_for_update())}
    now = utcnow()
    to_move: list[File] = []
    results: dict[int, Result] = {}  # also: rows whose result line is logged already (one line per file)
    hashed: list[tuple[File, int | None]] = []
    for f in found:
        row = rows[ids[id(f)]]
        if not _still_ours(row, f, report, claim, now):
            continue
        if not _settle(s, row, outcomes.get(row.id), layout.home, claim, results):
            row.claimed_by, row.claim_expires_at = claim.worker, claim.expires()
            report.retry.append(f.path)
        elif row.state in FINAL:
            to_move.append(row)
            _count(report, row, quiet=row.id in results)
            if row.id in results:
                hashed.append((row, results[row.id].phash))
        else:
            report.waiting += 1
    for row in look_alike(s, hashed, near_bits):
        report.near_duplicates += 1
        log.info("%s looks like file %d (%d bits apart)", row.source_path, row.looks_like, row.looks_like_bits)
    assign_destinations(s, layout, folder, to_move, now)
    store_results(s, list(results.items()))
    return to_move


def _still_ours(row: File, f: Found, report: BatchReport, claim: Claim, now: datetime) -> bool:
    """Whether this worker still holds the row and its file is what was hashed; it then gives up its claim."""
    if row.claimed_by != claim.worker or row.final_path is not None:
        log.warning("%s: taken over by worker %s; dropping this result", row.source_path, row.claimed_by)
        return False
    change = _changed(f)
    if change == "vanished" and row.state in LIVE:
        vanish(row, now)
        report.quarantined += 1
        return False
    if change == "changed":
        log.info("%s changed while it was being processed; starting over", row.source_path)
        row.claim_expires_at = claim.expires()
        report.retry.append(f.path)
        return False
    row.claimed_by = row.claim_expires_at = None
    return True


def _settle(s: Session, row: File, outcome, home: Path, claim: Claim, results: dict[int, Result]) -> bool:
    """The row's state from the step's outcome (or its first copy's). False: try it again later."""
    if row.duplicate_of is not None and row.state == FileState.pending.value:
        return _settle_duplicate(s, row, home, claim)
    if isinstance(outcome, Result):
        results[row.id] = outcome
        _log_result(row, outcome)
        row.state = FileState.processed.value
    elif isinstance(outcome, Rejected):
        quarantine(row, outcome)
    elif isinstance(outcome, ModelUnavailable):
        row.state, row.reason = FileState.awaiting_model.value, None
    elif isinstance(outcome, Exception):
        if row.attempts + 1 < MAX_STEP_ATTEMPTS:
            row.attempts += 1
            return False
        quarantine(row, Rejected("processing_error", f"{type(outcome).__name__}: {outcome}"[:500]))
    return True


def _count(report: BatchReport, row: File, *, quiet: bool = False) -> None:
    if row.duplicate_of is not None:
        report.duplicates += 1
    if row.state == FileState.processed.value:
        report.processed += 1
        dup = f" (same content as file {row.duplicate_of})" if row.duplicate_of is not None else ""
        if not quiet:
            log.info("processed %s%s", row.source_path, dup)
    else:
        report.quarantined += 1
        log.warning("quarantined %s: %s", row.source_path, row.reason)


def _settle_duplicate(s: Session, row: File, home: Path, claim: Claim) -> bool:
    """A duplicate ends as its first copy did, without a second inference. False: the first is not done yet,
    or it vanished (or was replaced) unseen and this row now defers to another first copy, or is the first."""
    first = s.get(File, row.duplicate_of)
    if first.state in LIVE and gone(home, first) and claimable(first, claim):
        vanish(first, utcnow())
    if first.state == FileState.quarantined.value and first.reason in UNSEEN:
        other = _first_rows(s, row.folder, {row.sha256}, home, claim).get(row.sha256)
        row.duplicate_of = None if other is None or other.id == row.id else other.id
        return False  # pending still: the next pass settles it against `other`, or classifies it
    if first.state in FINAL:
        row.state, row.reason = first.state, first.reason
        row.detail = f"same content as file {first.id} ({first.original_name})"
        return True
    if first.state == FileState.awaiting_model.value:
        row.state = first.state
        return True
    return False


def _log_result(row: File, r: Result) -> None:
    if r.predicted_class is not None:
        log.info("processed %s: %s (%.0f%%, model %s)", row.source_path, r.predicted_class,
                 100 * (r.confidence or 0), r.model_version)
    else:
        log.info("processed %s", row.source_path)
