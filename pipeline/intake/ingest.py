"""The inbox: exactly-once bookkeeping for a batch of complete files: register, compute, commit, then move.

    A  register   one transaction: a row per file (or the row a crash left behind), claimed, cheap rejections
                  decided, copies of content seen before marked (pipeline.intake.core does the rest)
    B  step       the step computes outcomes; nothing is written meanwhile
    C  commit     one transaction: results, final states and destinations
    D  move       files go to archive/ or quarantine/; one transaction records the moves

A crash between any two of these leaves either a `pending` row with its file still in the drop folder (redone
from B) or a committed destination (the move is finished at start-up). Disk full or a locked database: the
transaction rolls back, the files stay where they are, and the caller retries later.

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
from datetime import datetime
from pathlib import Path
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pipeline.images.decode import IMAGE_EXTENSIONS
from pipeline.errors import ModelUnavailable, Rejected
from pipeline.intake.near import look_alike
from pipeline.intake.core import (LIVE, BatchReport, Claim, Found, Layout, Registration, assign_destinations,
                                  claimable, gone, look_all, move, quarantine, register, transient, vanish)
from pipeline.inference.steps import Item, Result, Step, store_results, stream_ahead
from storage.clock import utcnow
from storage.db import session_scope
from storage.tables import File, FileState

log = logging.getLogger(__name__)

MAX_STEP_ATTEMPTS = 5
FINAL = (FileState.processed.value, FileState.quarantined.value)
UNSEEN = ("vanished", "replaced")  # quarantined before their content was looked at: nobody's first copy


def ingest_batch(
    engine, layout: Layout, folder: str, root: Path, paths: list[Path], step: Step, *, max_bytes: int,
    claim: Claim = Claim(), near_bits: int = 0,
) -> BatchReport:
    """Take complete files under `root` (the `folder` drop folder) through to a final or waiting state;
    `near_bits`: how many bits of perceptual hash apart an image may be from an earlier one to look like it.

    Example:
        >>> report = ingest_batch(engine, layout, "inbox", home / "inbox", [home / "inbox/a.jpg"], NoopStep(),
        ...                       max_bytes=10_000_000)
        >>> report.processed
        1
    """
    report = BatchReport()
    found = look_all(paths, root, max_bytes, report, allowed=IMAGE_EXTENSIONS)
    if not found:
        return report
    try:
        with session_scope(engine, write=True) as s:
            register(s, layout, found, claim, _Copies(s, folder, found, layout.home, claim))
            found = [f for f in found if f.row is not None]
            work = [f for f in found if f.row.state == FileState.pending.value and f.row.duplicate_of is None]
            ids = {id(f): f.row.id for f in found}
    except (OperationalError, OSError) as exc:
        return transient(report, [f.path for f in found], "register", exc)

    # C and D a part at a time, as the step hands its parts over: the bookkeeping of one part runs beside the
    # step's work on the next. The files that were no work (duplicates, rows decided at registration) come
    # last, when every first copy of this batch has its state.
    in_work = {id(f) for f in work}
    committed: set[int] = set()
    with closing(_parts(step, work, [f for f in found if id(f) not in in_work], ids, report)) as parts:
        for part, outcomes in parts:
            try:
                with session_scope(engine, write=True) as s:
                    moving = [r.id for r in _commit(s, layout, folder, part, ids, outcomes, report, claim, near_bits)]
            except (OperationalError, OSError) as exc:
                return transient(report, [f.path for f in found if id(f) not in committed], "commit", exc)
            committed.update(id(f) for f in part)
            move(engine, layout.home, moving)
    return report


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


def _parts(step: Step, work: list[Found], rest: list[Found], ids: dict, report: BatchReport
           ) -> Iterator[tuple[list[Found], dict[int, object]]]:
    """(files, outcome by row id) as the step finishes each part of `work`, then (`rest`, {})."""
    items = [Item(ids[id(f)], f.path, f.sha256) for f in work]
    done, stream = 0, stream_ahead(step, items) if items else iter(())
    while True:
        try:
            outcomes = next(stream, None)
        except Exception as exc:  # noqa: BLE001 - a broken step must not stop the daemon
            log.exception("step failed on a batch of %d files", len(items) - done)
            report.errors.append(f"{type(exc).__name__}: {exc}")
            outcomes = [exc] * (len(items) - done)
            stream = iter(())
        if outcomes is None:
            break
        if done + len(outcomes) > len(items):
            raise RuntimeError(f"step returned {done + len(outcomes)} outcomes for {len(items)} items")
        part, done = items[done:done + len(outcomes)], done + len(outcomes)
        yield work[done - len(part):done], {i.file_id: o for i, o in zip(part, outcomes)}
    if done != len(items):
        raise RuntimeError(f"step returned {done} outcomes for {len(items)} items")
    if rest:
        yield rest, {}


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
