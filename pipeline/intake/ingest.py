"""Exactly-once bookkeeping for a batch of complete files: register, compute, commit, then move.

    A  register   one transaction: a row per file (or the row a crash left behind), cheap rejections decided
    B  step       the step computes outcomes; nothing is written meanwhile
    C  commit     one transaction: results, final states and destinations
    D  move       files go to archive/ or quarantine/; one transaction records the moves

A crash between any two of these leaves either a `pending` row with its file still in the drop folder (redone
from B) or a committed destination (the move is finished at start-up). Disk full or a locked database: the
transaction rolls back, the files stay where they are, and the caller retries later.

C looks at each file again: one that is gone (deleted, or renamed: its new name is a new file) ends as
`vanished`; one whose size, mtime or ctime changed since it was hashed is not committed but started over (the
next pass registers its new content, the old row ends as `replaced`), so what is archived is what was
classified. A vanished or replaced row is never the "first copy" that a later file with its content defers to.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from pipeline.images.decode import check_entry, open_for_reading
from pipeline.errors import ModelUnavailable, Rejected
from pipeline.inference.steps import Item, Result, Step, store_results
from storage.clock import as_utc, utcnow
from storage.db import session_scope
from storage.files import finish_moves, planned_destinations, unique_destination
from storage.tables import File, FileState

log = logging.getLogger(__name__)

MAX_STEP_ATTEMPTS = 5
FINAL = (FileState.processed.value, FileState.quarantined.value)
LIVE = (FileState.pending.value, FileState.awaiting_model.value, FileState.awaiting_partner.value)


@dataclass(frozen=True)
class Layout:
    """Absolute folders; `home` is what every stored path is relative to."""

    home: Path
    archive: Path
    quarantine: Path

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.home)).as_posix()


@dataclass
class BatchReport:
    processed: int = 0
    quarantined: int = 0
    duplicates: int = 0
    waiting: int = 0
    retry: list[Path] = field(default_factory=list)  # transient failure: try again later
    errors: list[str] = field(default_factory=list)


@dataclass
class _Found:
    path: Path
    rel: str  # relative to the drop folder
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    sha256: str | None = None
    rejected: Rejected | None = None
    row: File | None = None


def sha256_file(path: Path) -> str:
    """Hash a file opened the safe way (no symlink followed, no FIFO blocked on)."""
    with os.fdopen(open_for_reading(path), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class Claim:
    """Who is registering and for how long the claim holds (several daemons may share one inbox)."""

    worker: int | None = None
    seconds: float = 120.0

    def expires(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.seconds)


def ingest_batch(
    engine, layout: Layout, folder: str, root: Path, paths: list[Path], step: Step, *, max_bytes: int,
    claim: Claim = Claim(),
) -> BatchReport:
    """Take complete files under `root` (the `folder` drop folder) through to a final or waiting state.

    Example:
        >>> report = ingest_batch(engine, layout, "inbox", home / "inbox", [home / "inbox/a.jpg"], NoopStep(),
        ...                       max_bytes=10_000_000)
        >>> report.processed
        1
    """
    report = BatchReport()
    found = [f for f in (_look(p, root, max_bytes, report) for p in paths) if f is not None]
    if not found:
        return report
    try:
        with session_scope(engine) as s:
            _register(s, layout, folder, found, claim)
            found = [f for f in found if f.row is not None]
            work = [f for f in found if f.row.state == FileState.pending.value and f.row.duplicate_of is None]
            ids = {id(f): f.row.id for f in found}
    except (OperationalError, OSError) as exc:
        return _transient(report, found, "register", exc)

    outcomes = _run_step(step, work, ids, report)
    try:
        with session_scope(engine) as s:
            moving = [r.id for r in _commit(s, layout, folder, found, ids, outcomes, report, claim)]
    except (OperationalError, OSError) as exc:
        return _transient(report, found, "commit", exc)
    try:
        with session_scope(engine) as s:
            finish_moves(s, layout.home, s.scalars(select(File).where(File.id.in_(moving))).all())
    except (OperationalError, OSError) as exc:
        # Destinations are committed: the daemon's recovery finishes these moves later.
        log.warning("recording moves failed (%s); they are finished on the next pass", exc)
    return report


def _transient(report: BatchReport, found: list[_Found], phase: str, exc: Exception) -> BatchReport:
    log.warning("%s of %d files failed (%s); they stay in place and are retried", phase, len(found), exc)
    report.retry.extend(f.path for f in found)
    return report


def _look(path: Path, root: Path, max_bytes: int, report: BatchReport) -> _Found | None:
    from pipeline.images.decode import IMAGE_EXTENSIONS

    rel = path.relative_to(root).as_posix()
    f = _Found(path, rel)
    try:
        st = check_entry(path, max_bytes=max_bytes, allowed=IMAGE_EXTENSIONS)
        f.size, f.mtime_ns, f.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        f.sha256 = sha256_file(path)
    except FileNotFoundError:
        return None  # gone before we got to it: nothing to account for
    except Rejected as exc:
        f.rejected = exc
        try:
            st = os.lstat(path)
            f.size, f.mtime_ns, f.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        except OSError:
            return None
    except OSError as exc:
        log.warning("%s: cannot read (%s); will retry", path, exc.strerror)
        report.retry.append(path)
        return None
    return f


def _register(s: Session, layout: Layout, folder: str, found: list[_Found], claim: Claim) -> None:
    locations = {layout.rel(f.path): f for f in found}
    # Rows another worker is registering right now are locked: skip them rather than wait (PostgreSQL).
    left_behind = {
        r.location: r
        for r in s.scalars(select(File).where(File.location.in_(list(locations)), File.moved_at.is_(None))
                           .with_for_update(skip_locked=True))
    }
    first_by_sha = _first_rows(s, {f.sha256 for f in found if f.sha256}, layout.home, claim)
    new: list[tuple[str, _Found]] = []
    for loc, f in locations.items():
        old = left_behind.get(loc)
        if old is not None and (old.final_path is not None or not _claimable(old, claim)):
            continue  # its move is pending (recovery finishes it), or a live worker holds it
        if old is not None and old.sha256 == f.sha256 and f.rejected is None:
            f.row = old  # a crash or a wait left this row: carry on with it
            old.state, old.claimed_by, old.claim_expires_at = FileState.pending.value, claim.worker, claim.expires()
            continue
        if old is not None:
            # The file at this path was replaced before it was processed; the old content is gone.
            old.state, old.reason, old.location = FileState.quarantined.value, "replaced", None
            old.moved_at = old.processed_at = datetime.now(timezone.utc)
        new.append((loc, f))
    if not _insert_all(s, folder, new, first_by_sha, claim):
        for loc, f in new:  # another worker registered some of these first: one at a time
            row = _new_row(folder, loc, f, first_by_sha, claim)
            if _insert(s, row, f.path):
                f.row = row
                _note_first(f, row, first_by_sha)
    s.flush()


def _new_row(folder: str, loc: str, f: _Found, first_by_sha: dict[str, File], claim: Claim) -> File:
    row = File(folder=folder, source_path=f.rel, original_name=Path(f.rel).name, size=f.size,
               mtime_ns=f.mtime_ns, sha256=f.sha256, location=loc, state=FileState.pending.value,
               claimed_by=claim.worker, claim_expires_at=claim.expires())
    if f.rejected is not None:
        _quarantine(row, f.rejected)
    elif f.sha256 in first_by_sha:
        row.duplicate_of = first_by_sha[f.sha256].id
    return row


def _note_first(f: _Found, row: File, first_by_sha: dict[str, File]) -> None:
    if f.sha256 and f.rejected is None and f.sha256 not in first_by_sha:
        first_by_sha[f.sha256] = row


def _insert_all(s: Session, folder: str, new: list[tuple[str, _Found]], first_by_sha: dict[str, File],
                claim: Claim) -> bool:
    """The usual case, in one statement: no other worker registered any of these files. False (and nothing
    inserted) otherwise. The same content twice in one batch: the later copies point at the first."""
    rows = [_new_row(folder, loc, f, first_by_sha, claim) for loc, f in new]
    if not rows:
        return True
    try:
        with s.begin_nested():
            s.add_all(rows)
            s.flush()
            if not all(os.path.lexists(f.path) for _, f in new):
                raise _Gone
    except (IntegrityError, _Gone):
        for row in rows:
            if row in s:
                s.expunge(row)
        return False
    for (_, f), row in zip(new, rows):
        f.row = row
        if f.sha256 and f.rejected is None and row.duplicate_of is None:
            first = first_by_sha.setdefault(f.sha256, row)
            if first is not row:
                row.duplicate_of = first.id  # a copy of a file earlier in this batch (flushed: it has an id)
    return True


class _Gone(Exception):
    pass


def _insert(s: Session, row: File, path: Path) -> bool:
    """Insert, unless another worker registered the same file first (the live-location unique index) or has
    already finished it: the file is looked for after the insert, because a row that another worker marked
    moved no longer blocks the index, but its file is gone by then."""
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
            if not os.path.lexists(path):
                raise _Gone
    except (IntegrityError, _Gone):
        if row in s:
            s.expunge(row)
        return False
    return True


def _claimable(row: File, claim: Claim) -> bool:
    if row.claimed_by is None or row.claimed_by == claim.worker or row.claim_expires_at is None:
        return True
    return as_utc(row.claim_expires_at) < utcnow()


UNSEEN = ("vanished", "replaced")  # quarantined before their content was looked at: nobody's first copy


def _first_rows(s: Session, shas: set[str], home: Path, claim: Claim) -> dict[str, File]:
    """The first row of each content, that later copies end as. A live one whose file is gone is resolved
    as vanished here and passed over: a file with its content is new, not a copy of nothing."""
    if not shas:
        return {}
    rows = s.scalars(
        select(File)
        .where(File.sha256.in_(list(shas)), File.duplicate_of.is_(None), File.state != FileState.requeued.value,
               ~((File.state == FileState.quarantined.value) & File.reason.in_(UNSEEN)))
        .order_by(File.id)
    )
    out: dict[str, File] = {}
    now = datetime.now(timezone.utc)
    for r in rows:
        if r.sha256 in out:
            continue
        if r.state in LIVE and _gone(home, r) and _claimable(r, claim):
            _vanish(r, now)
            continue
        out[r.sha256] = r
    return out


def _gone(home: Path, row: File) -> bool:
    return row.location is not None and row.final_path is None and not os.path.lexists(home / row.location)


def _vanish(row: File, now: datetime) -> None:
    log.warning("%s: vanished before it was processed", row.location)
    row.state, row.reason, row.location = FileState.quarantined.value, "vanished", None
    row.moved_at = row.processed_at = now
    row.claimed_by = row.claim_expires_at = None


def forget_vanished(s: Session, home: Path, claim: Claim = Claim()) -> int:
    """Resolve live rows (pending or waiting) whose file is no longer in its drop folder: deleted, or renamed
    while the daemon was down or by an older version. Returns how many."""
    now = datetime.now(timezone.utc)
    rows = s.scalars(select(File).where(File.state.in_(LIVE), File.location.is_not(None), File.final_path.is_(None)))
    gone = [r for r in rows if _claimable(r, claim) and _gone(home, r)]
    for r in gone:
        _vanish(r, now)
    return len(gone)


def _changed(f: _Found) -> str | None:
    """Whether the file is still what was hashed: None when it is, else "vanished" or "changed"."""
    try:
        st = os.lstat(f.path)
    except (FileNotFoundError, NotADirectoryError):
        return "vanished"
    except OSError:
        return None  # cannot tell: the move will say
    return "changed" if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (f.size, f.mtime_ns, f.ctime_ns) else None


def _quarantine(row: File, exc: Rejected) -> None:
    row.state, row.reason, row.detail = FileState.quarantined.value, exc.code, exc.detail or str(exc)


def _run_step(step: Step, work: list[_Found], ids: dict, report: BatchReport) -> dict[int, object]:
    if not work:
        return {}
    items = [Item(ids[id(f)], f.path, f.sha256) for f in work]
    try:
        outcomes = step(items)
    except Exception as exc:  # noqa: BLE001 - a broken step must not stop the daemon
        log.exception("step failed on a batch of %d files", len(items))
        report.errors.append(f"{type(exc).__name__}: {exc}")
        return {i.file_id: exc for i in items}
    if len(outcomes) != len(items):
        raise RuntimeError(f"step returned {len(outcomes)} outcomes for {len(items)} items")
    return {i.file_id: o for i, o in zip(items, outcomes)}


def _commit(s, layout, folder, found, ids, outcomes, report, claim: Claim) -> list[File]:
    rows = {r.id: r for r in s.scalars(select(File).where(File.id.in_(list(ids.values()))).with_for_update())}
    now = datetime.now(timezone.utc)
    to_move: list[File] = []
    taken = set()
    said: set[int] = set()  # rows whose result line is logged already: one line per file
    results: list[tuple[int, Result]] = []
    for f in found:
        row = rows[ids[id(f)]]
        if row.claimed_by != claim.worker or row.final_path is not None:
            log.warning("%s: taken over by worker %s; dropping this result", row.source_path, row.claimed_by)
            continue
        change = _changed(f)
        if change == "vanished" and row.state in LIVE:
            _vanish(row, now)
            report.quarantined += 1
            continue
        if change == "changed":
            log.info("%s changed while it was being processed; starting over", row.source_path)
            row.claim_expires_at = claim.expires()
            report.retry.append(f.path)
            continue
        row.claimed_by = row.claim_expires_at = None
        outcome = outcomes.get(row.id)
        if row.duplicate_of is not None and row.state == FileState.pending.value:
            if not _settle_duplicate(s, row, layout.home, claim):
                row.claimed_by, row.claim_expires_at = claim.worker, claim.expires()
                report.retry.append(f.path)
                continue
        elif isinstance(outcome, Result):
            results.append((row.id, outcome))
            _log_result(row, outcome)
            row.state = FileState.processed.value
            said.add(row.id)
        elif isinstance(outcome, Rejected):
            _quarantine(row, outcome)
        elif isinstance(outcome, ModelUnavailable):
            row.state, row.reason = FileState.awaiting_model.value, None
        elif isinstance(outcome, Exception):
            if row.attempts + 1 >= MAX_STEP_ATTEMPTS:
                _quarantine(row, Rejected("processing_error", f"{type(outcome).__name__}: {outcome}"[:500]))
            else:
                row.attempts += 1
                row.claimed_by, row.claim_expires_at = claim.worker, claim.expires()
                report.retry.append(f.path)
                continue
        if row.state in FINAL:
            row.processed_at = now
            base = layout.archive if row.state == FileState.processed.value else layout.quarantine
            row.final_path = unique_destination(layout.home, f"{layout.rel(base)}/{folder}/{row.source_path}", taken)
            to_move.append(row)
            _count(report, row, quiet=row.id in said)
        else:
            report.waiting += 1
    clash = planned_destinations(s, to_move)
    for r in to_move:
        if r.final_path in clash:  # promised to another row earlier (its file not moved yet): pick again
            r.final_path = unique_destination(layout.home, r.final_path, taken | clash)
    store_results(s, results)
    return to_move


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
    if first.state in LIVE and _gone(home, first) and _claimable(first, claim):
        _vanish(first, datetime.now(timezone.utc))
    if first.state == FileState.quarantined.value and first.reason in UNSEEN:
        other = _first_rows(s, {row.sha256}, home, claim).get(row.sha256)
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
