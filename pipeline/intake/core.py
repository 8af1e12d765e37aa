"""One intake path for both drop folders: look at a file, register and claim its row, choose its destination, move.

    A  register   one transaction: a row per file (or the row a crash or a wait left behind), claimed by this
                  worker; cheap rejections decided. Several workers may share a drop folder: rows another
                  worker is registering are skipped, not waited for, and a live worker's claim is respected.
    B, C          the caller's part: what the file becomes (pipeline.intake.ingest: a model step and its results;
                  pipeline.intake.labelled: pairs of image and label become Samples), committed with each row's
                  final state and destination (`assign_destinations`)
    D  move       files go to archive/<folder>/ or quarantine/<folder>/; one transaction records the moves

A file at a location whose row holds other content was replaced before it was done: the old row ends as
`replaced`. A live row whose file is gone ends as `vanished`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from pipeline.images.decode import check_entry, open_for_reading
from pipeline.errors import Rejected
from storage.clock import as_utc, utcnow
from storage.db import session_scope
from storage.files import finish_moves, planned_destinations, unique_destination
from storage.tables import File, FileState

log = logging.getLogger(__name__)

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
    near_duplicates: int = 0  # processed, and looking like an earlier file (pipeline.intake.near)
    waiting: int = 0
    retry: list[Path] = field(default_factory=list)  # transient failure: try again later
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """Who is registering and for how long the claim holds (several daemons may share one drop folder)."""

    worker: int | None = None
    seconds: float = 120.0

    def expires(self) -> datetime:
        return utcnow() + timedelta(seconds=self.seconds)


@dataclass
class Found:
    """A complete file as it was looked at: what it was when hashed, and the row it got."""

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


def look(path: Path, root: Path, max_bytes: int, report: BatchReport, *, allowed: frozenset[str] | set[str],
         empty_ok: Callable[[str], bool] = lambda rel: False) -> Found | None:
    """Check and hash one file. None: it is gone (nothing to account for) or cannot be read now (retried);
    a file that fails a check comes back with `rejected`. `empty_ok(rel)`: an empty file that is fine."""
    f = Found(path, path.relative_to(root).as_posix())
    try:
        try:
            st = check_entry(path, max_bytes=max_bytes, allowed=allowed)
        except Rejected as exc:
            if exc.code != "zero_bytes" or not empty_ok(f.rel):
                raise
            st = os.lstat(path)
        f.size, f.mtime_ns, f.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        f.sha256 = sha256_file(path)
    except FileNotFoundError:
        return None  # gone before we got to it
    except Rejected as exc:
        f.rejected = exc
        try:
            st = os.lstat(path)
        except OSError:
            return None
        f.size, f.mtime_ns, f.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
    except OSError as exc:
        log.warning("%s: cannot read (%s); will retry", path, exc.strerror)
        report.retry.append(path)
        return None
    return f


LOOK_THREADS = 2  # hashing releases the GIL: a batch of 12 MP phone photos is hashed on two cores, not one


def look_all(paths: list[Path], root: Path, max_bytes: int, report: BatchReport, *,
             allowed: frozenset[str] | set[str], empty_ok: Callable[[str], bool] = lambda rel: False) -> list[Found]:
    """`look` at each path, in order, the found ones. A batch is hashed by LOOK_THREADS threads: nothing else
    runs while a batch is hashed before its registration (128 phone photos: ~150 ms on one core)."""
    def one(p: Path) -> Found | None:
        return look(p, root, max_bytes, report, allowed=allowed, empty_ok=empty_ok)

    if len(paths) < 2 * LOOK_THREADS:
        return [f for f in map(one, paths) if f is not None]
    with ThreadPoolExecutor(max_workers=LOOK_THREADS, thread_name_prefix="intake-hash") as pool:
        return [f for f in pool.map(one, paths) if f is not None]


def transient(report: BatchReport, paths: list[Path], phase: str, exc: Exception) -> BatchReport:
    """Disk full, a locked database: the transaction rolled back, the files stay where they are."""
    log.warning("%s of %d files failed (%s); they stay in place and are retried", phase, len(paths), exc)
    report.retry.extend(paths)
    return report


class Registration:
    """What differs between drop folders when their files are registered; this base is labeled/'s."""

    def __init__(self, folder: str):
        self.folder = folder

    def carry_on(self, row: File, f: Found) -> bool:
        """Whether the row left at f's location (a crash, a wait) goes on for f; False: f replaced it."""
        return row.sha256 == f.sha256

    def new_row(self, row: File, f: Found) -> None:
        """A new, accepted row before it is inserted."""

    def inserted(self, row: File, f: Found) -> None:
        """A new, accepted row once inserted (it has its id)."""


def register(s: Session, layout: Layout, found: list[Found], claim: Claim, how: Registration) -> None:
    """Phase A: each file gets its row (`f.row`), claimed by `claim`; a file another worker holds gets none."""
    locations = {layout.rel(f.path): f for f in found}
    # Rows another worker is registering right now are locked: skip them rather than wait (PostgreSQL).
    left_behind = {
        r.location: r
        for r in s.scalars(select(File).where(File.location.in_(list(locations)), File.moved_at.is_(None))
                           .with_for_update(skip_locked=True))
    }
    new: list[tuple[str, Found]] = []
    for loc, f in locations.items():
        old = left_behind.get(loc)
        if old is not None and (old.final_path is not None or not claimable(old, claim)):
            continue  # its move is pending (recovery finishes it), or a live worker holds it
        if old is not None and how.carry_on(old, f):
            f.row = old
            old.claimed_by, old.claim_expires_at = claim.worker, claim.expires()
            continue
        if old is not None:  # the file at this path was replaced before it was done; the old content is gone
            old.state, old.reason, old.location = FileState.quarantined.value, "replaced", None
            old.moved_at = old.processed_at = utcnow()
        new.append((loc, f))
    if not _insert_all(s, how, new, claim):
        for loc, f in new:  # another worker registered some of these first: one at a time
            row = _new_row(how, loc, f, claim)
            if _insert(s, [row], [f]):
                _got(how, row, f)
    s.flush()


def _new_row(how: Registration, loc: str, f: Found, claim: Claim) -> File:
    row = File(folder=how.folder, source_path=f.rel, original_name=PurePosixPath(f.rel).name, size=f.size,
               mtime_ns=f.mtime_ns, sha256=f.sha256, location=loc, state=FileState.pending.value,
               claimed_by=claim.worker, claim_expires_at=claim.expires())
    if f.rejected is not None:
        quarantine(row, f.rejected)
    else:
        how.new_row(row, f)
    return row


def _insert_all(s: Session, how: Registration, new: list[tuple[str, Found]], claim: Claim) -> bool:
    """The usual case, in one statement: no other worker registered any of these files. False (and nothing
    inserted) otherwise."""
    rows = [_new_row(how, loc, f, claim) for loc, f in new]
    if not rows:
        return True
    if not _insert(s, rows, [f for _, f in new]):
        return False
    for (_, f), row in zip(new, rows):
        _got(how, row, f)
    return True


def _got(how: Registration, row: File, f: Found) -> None:
    f.row = row
    if f.rejected is None:
        how.inserted(row, f)


def _insert(s: Session, rows: list[File], found: list[Found]) -> bool:
    """Insert, unless another worker registered one of these files first (the live-location unique index) or
    has already finished it: the files are looked for after the insert, because a row that another worker
    marked moved no longer blocks the index, but its file is gone by then."""
    return insert_once(s, rows, still_there=lambda: all(os.path.lexists(f.path) for f in found))


def insert_once(s: Session, rows: list, *, still_there=lambda: True) -> bool:
    """Add `rows` in a savepoint; False, with nothing added, when a unique index says another worker (or an
    earlier run) recorded them first, or when `still_there()` says their files went meanwhile."""
    try:
        with s.begin_nested():
            s.add_all(rows)
            s.flush()
            if not still_there():
                raise _Gone
    except (IntegrityError, _Gone):
        for row in rows:
            if row in s:
                s.expunge(row)
        return False
    return True


class _Gone(Exception):
    pass


def claimable(row: File, claim: Claim) -> bool:
    if row.claimed_by is None or row.claimed_by == claim.worker or row.claim_expires_at is None:
        return True
    return as_utc(row.claim_expires_at) < utcnow()


def quarantine(row: File, exc: Rejected) -> None:
    row.state, row.reason, row.detail = FileState.quarantined.value, exc.code, str(exc)


def gone(home: Path, row: File) -> bool:
    return row.location is not None and row.final_path is None and not os.path.lexists(home / row.location)


def vanish(row: File, now: datetime) -> None:
    log.warning("%s: vanished before it was processed", row.location)
    row.state, row.reason, row.location = FileState.quarantined.value, "vanished", None
    row.moved_at = row.processed_at = now
    row.claimed_by = row.claim_expires_at = None


def forget_vanished(s: Session, home: Path, claim: Claim = Claim()) -> int:
    """Resolve live rows (pending or waiting) whose file is no longer in its drop folder: deleted, or renamed
    while the daemon was down or by an older version. Returns how many."""
    now = utcnow()
    rows = s.scalars(select(File).where(File.state.in_(LIVE), File.location.is_not(None), File.final_path.is_(None)))
    lost = [r for r in rows if claimable(r, claim) and gone(home, r)]
    for r in lost:
        vanish(r, now)
    return len(lost)


def assign_destinations(s: Session, layout: Layout, folder: str, rows: list[File], now: datetime) -> None:
    """Each final row gets its destination, archive/<folder>/<relpath> or quarantine/<folder>/<relpath>, under
    a name no file has and no other row was promised (a row whose file is not moved yet)."""
    taken: set[str] = set()
    wanted = {}
    for row in rows:
        base = layout.archive if row.state == FileState.processed.value else layout.quarantine
        wanted[row.id] = f"{layout.rel(base)}/{folder}/{row.source_path}"
        row.final_path = unique_destination(layout.home, wanted[row.id], taken)
        row.processed_at = now
    # A name free on disk may still be another row's (a file not moved yet, or archive/ emptied by hand): pick
    # again until the database holds none of them.
    pending = rows
    while clash := planned_destinations(s, pending):
        taken |= clash
        pending = [r for r in pending if r.final_path in clash]
        for r in pending:
            r.final_path = unique_destination(layout.home, wanted[r.id], taken)


def move(engine, home: Path, ids: list[int]) -> None:
    """Phase D: move the files of these rows (destinations committed) and record it."""
    try:
        with session_scope(engine, write=True) as s:
            finish_moves(s, home, s.scalars(select(File).where(File.id.in_(ids))).all())
    except (OperationalError, OSError) as exc:
        # Destinations are committed: the daemon's recovery finishes these moves later.
        log.warning("recording moves failed (%s); they are finished on the next pass", exc)
