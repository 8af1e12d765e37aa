"""File moves that stay consistent with the database.

The rule (Maildir's): decide the destination, commit it, then move; a move is idempotent, so a restart after
`kill -9` at any step just finishes it. Originals are never overwritten and never deleted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.names import portable
from storage.tables import File

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (hashlib.file_digest)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

NAME_MAX = 255  # bytes, on every Linux file system we care about
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # passes once space is freed: retried on every pass, as before
MOVE_NOTE = "cannot move to "  # how a failed move is noted in `detail` (and found again to clear it)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` to write; when the block ends it replaces `path` in one step (a reader
    sees the old file or the new one, never half of one), and on an error it is removed. `durable` fsyncs the
    file before and its folder after the replace, so that the new file survives a power cut."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomically(path: Path, text: str, *, durable: bool = False) -> None:
    """Replace `path` with `text` (UTF-8) through `replacing`."""
    with replacing(path, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fit(stem: str, suffix: str, tag: str) -> str:
    """stem + tag + suffix, with the stem cut (on a character boundary) to fit NAME_MAX bytes."""
    budget = NAME_MAX - len((tag + suffix).encode())
    data = stem.encode()
    if len(data) > budget:
        stem = data[:budget].decode(errors="ignore")
    return f"{stem}{tag}{suffix}"


def unique_destination(home: Path, rel: str, taken: set[str]) -> str:
    """A path relative to `home` like `rel` that names no existing file and no path in `taken`.

    `taken` holds destinations already planned (in this batch or in the database) but not yet moved. Bytes of
    the name that are not UTF-8 become %XX: a file we place gets a name every tool (and the report) can hold.
    """
    p = PurePosixPath(portable(rel))
    suffix = p.suffix if len(p.suffix) <= 16 else ""
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    for n in range(0, 100_000):
        name = _fit(stem, suffix, "" if n == 0 else f"-{n}")
        candidate = str(p.parent / name)
        if candidate not in taken and not os.path.lexists(home / candidate):
            taken.add(candidate)
            return candidate
    raise OSError(errno.EEXIST, f"no free name for {rel}")


def planned_destinations(session: Session, rows: list[File]) -> set[str]:
    """Which of these rows' destinations the database already promised to some other file."""
    out: set[str] = set()
    ids = {r.id for r in rows}
    with session.no_autoflush:
        for i in range(0, len(rows), 500):
            chunk = [r.final_path for r in rows[i : i + 500]]
            hits = session.execute(select(File.id, File.final_path).where(File.final_path.in_(chunk)))
            out.update(path for row_id, path in hits if row_id not in ids)
    return out


def _link_into_place(home: Path, src_rel: str, dst_rel: str) -> bool:
    """Give the file its destination name as well; True when a new entry was made (its folder wants an fsync).

    A hard link then (later) an unlink, rather than a rename: the link fails instead of overwriting, and
    inotify reports the unlink at once, where an unpaired rename-out is held back half a second by watchdog's
    move pairing and delays every event behind it. Works for symlinks and FIFOs (the link is to the entry
    itself). Across devices (or where hard links are not supported), it copies to a temp name, fsyncs and
    renames. A crash leaves at worst both names, never none.
    """
    src, dst = home / src_rel, home / dst_rel
    if not os.path.lexists(src):
        if os.path.lexists(dst):
            return False  # done before a crash
        raise FileNotFoundError(errno.ENOENT, "neither source nor destination exists", str(src))
    if os.path.lexists(dst):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        _place(src, dst)
    except FileExistsError:
        pass  # another worker placed it between our check and our link
    return True


def _drop_source(home: Path, src_rel: str) -> None:
    # The destination was reserved for this file, so it is a finished copy of it: drop the source. Another
    # worker finishing the same move may have dropped it already.
    try:
        os.unlink(home / src_rel)
    except FileNotFoundError:
        pass


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    tmp = dst.with_name(f".{dst.name[:200]}.coverwatch-tmp")
    try:
        shutil.copy2(src, tmp, follow_symlinks=False)
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, dst)
    except OSError:
        try:
            os.unlink(tmp)  # a half copy (disk full, unreadable source) is nobody's file
        except OSError:
            pass
        raise


class MoveBackoff:
    """When a move that failed for a lasting reason (EPERM, EACCES, EROFS: `chattr +i`, a read-only mount) is
    tried again: `first` seconds after the first failure, doubling up to `most`. Disk full is not backed off.

    Kept in memory: a restart tries each such move once at start-up, then backs off again.
    """

    def __init__(self, first: float = 60.0, most: float = 3600.0, clock=time.monotonic):
        self.first, self.most, self.clock = first, most, clock
        self._next: dict[int, tuple[int, float]] = {}  # row id -> (failures, when to try again)

    def due(self, row_id: int) -> bool:
        entry = self._next.get(row_id)
        return entry is None or self.clock() >= entry[1]

    def failed(self, row_id: int) -> float:
        n = self._next.get(row_id, (0, 0.0))[0] + 1
        delay = min(self.most, self.first * 2 ** (n - 1))
        self._next[row_id] = (n, self.clock() + delay)
        return delay

    def done(self, row_id: int) -> None:
        self._next.pop(row_id, None)


def finish_moves(session: Session, home: Path, rows: Iterable[File],
                 backoff: MoveBackoff | None = None) -> list[File]:
    """Move each row's file to its committed destination and record it. Returns rows that failed.

    In three passes, so that a batch costs one fsync per destination folder rather than one per file: every
    file gets its new name, the folders are synced, and only then are the old names dropped. A file that
    cannot be moved for a lasting reason stays where it is, noted `cannot_move`, and is tried again when
    `backoff` says so (every call without one); it never stops the other moves.
    """
    now = datetime.now(timezone.utc)
    due = [row for row in rows if row.final_path is not None and row.location != row.final_path
           and (backoff is None or backoff.due(row.id))]
    failed, placed = _link_into_places(home, due, backoff, now)
    folders = {(home / row.final_path).parent for row, made in placed if made}
    try:
        for folder in folders:
            fsync_dir(folder)
    except OSError as exc:
        log.warning("cannot sync %d archive folders (%s); the moves are retried", len(folders), exc.strerror)
        return failed + [row for row, _ in placed]
    return failed + _drop_sources(home, placed, backoff, now)


def _link_into_places(home: Path, rows: list[File], backoff: MoveBackoff | None,
                      now: datetime) -> tuple[list[File], list[tuple[File, bool]]]:
    """The first pass: each file gets its new name too. Returns the rows that failed and (row, name made)."""
    failed, placed = [], []
    for row in rows:
        try:
            made = _link_into_place(home, row.location, row.final_path)
        except FileNotFoundError:
            log.warning("%s: vanished before it could be moved to %s", row.location, row.final_path)
            row.detail = (row.detail + "; " if row.detail else "") + "file vanished before its move"
            row.location = None
            _moved(row, now)
        except OSError as exc:
            _cannot_move(row, exc, backoff)
            failed.append(row)
        else:
            placed.append((row, made))
    return failed, placed


def _drop_sources(home: Path, placed: list[tuple[File, bool]], backoff: MoveBackoff | None,
                  now: datetime) -> list[File]:
    """The last pass, once the new names are synced: the old names go. Returns the rows that failed."""
    failed = []
    for row, made in placed:
        try:
            _drop_source(home, row.location)
        except OSError as exc:
            _take_back(home, row, made)
            _cannot_move(row, exc, backoff)
            failed.append(row)
            continue
        row.location = row.final_path
        _moved(row, now)
        if backoff is not None:
            backoff.done(row.id)
    return failed


def _take_back(home: Path, row: File, made: bool) -> None:
    """The source cannot be dropped: remove the destination name again, so the file is only where it was.
    Only a name this call made, or another name of the very same file: the source keeps the content."""
    src, dst = home / row.location, home / row.final_path
    try:
        if made or os.path.samestat(os.lstat(src), os.lstat(dst)):
            os.unlink(dst)
    except OSError as exc:
        log.warning("%s: left at %s as well (%s)", row.location, row.final_path, exc.strerror)


def _cannot_move(row: File, exc: OSError, backoff: MoveBackoff | None) -> None:
    if exc.errno in DISK_FULL:
        log.warning("cannot move %s to %s (%s); will retry", row.location, row.final_path, exc.strerror)
        return
    if row.reason is None or row.reason == "cannot_move":  # a quarantined file keeps why it was quarantined
        row.reason = "cannot_move"
    row.detail = _without_note(row.detail)
    note = f"{MOVE_NOTE}{row.final_path}: {exc.strerror or exc}"
    row.detail = f"{row.detail}; {note}" if row.detail else note
    later = f"in {backoff.failed(row.id):.0f} s" if backoff is not None else "on the next pass"
    log.warning("cannot move %s to %s (%s); it stays where it is, tried again %s", row.location, row.final_path,
                exc.strerror or exc, later)


def _without_note(detail: str | None) -> str | None:
    if detail is None or detail.startswith(MOVE_NOTE):
        return None
    return detail.split("; " + MOVE_NOTE)[0]


def _moved(row: File, now: datetime) -> None:
    row.moved_at = now
    if MOVE_NOTE in (row.detail or ""):  # it was stuck before: the move is done now
        row.detail = _without_note(row.detail)
        if row.reason == "cannot_move":
            row.reason = None
    if row.state == "requeued":
        row.final_path = None  # the inbox is not a final place: the file's next row owns it now


def unfinished_moves(session: Session) -> list[File]:
    """Rows whose destination was committed but whose file has not got there yet (a crash, a full disk)."""
    return list(
        session.scalars(
            select(File).where(File.final_path.is_not(None), File.moved_at.is_(None), File.location.is_not(None))
        )
    )


def requeue(session: Session, home: Path, inbox_rel: str, ids: list[int] | None) -> list[File]:
    """Send quarantined files back to the inbox (all of them when `ids` is None).

    The old row stays as history (state `requeued`); the file's next life is a new row. Like every move, the
    destination is committed before the file moves, and `finish_moves` completes it after a crash.
    """
    from storage.tables import FileState

    query = select(File).where(File.state == FileState.quarantined.value, File.location.is_not(None))
    if ids is not None:
        query = query.where(File.id.in_(ids))
    rows = list(session.scalars(query))
    taken: set[str] = set()
    for row in rows:
        row.state = FileState.requeued.value
        row.final_path = unique_destination(home, f"{inbox_rel}/{row.source_path}", taken)
        row.moved_at = None
    session.flush()
    return rows
