"""File moves that stay consistent with the database.

The rule (Maildir's): decide the destination, commit it, then move; a move is idempotent, so a restart after
`kill -9` at any step just finishes it. Originals are never overwritten and never deleted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.names import portable
from storage.tables import File

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes, on every Linux file system we care about


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
    shutil.copy2(src, tmp, follow_symlinks=False)
    if tmp.is_file():
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.rename(tmp, dst)


def finish_moves(session: Session, home: Path, rows: Iterable[File]) -> list[File]:
    """Move each row's file to its committed destination and record it. Returns rows that failed.

    In three passes, so that a batch costs one fsync per destination folder rather than one per file: every
    file gets its new name, the folders are synced, and only then are the old names dropped.
    """
    failed, placed, folders = [], [], set()
    now = datetime.now(timezone.utc)
    for row in rows:
        if row.final_path is None or row.location == row.final_path:
            continue
        try:
            if _link_into_place(home, row.location, row.final_path):
                folders.add((home / row.final_path).parent)
        except FileNotFoundError:
            log.warning("%s: vanished before it could be moved to %s", row.location, row.final_path)
            row.detail = (row.detail + "; " if row.detail else "") + "file vanished before its move"
            row.location = None
            _moved(row, now)
        except OSError as exc:
            log.warning("cannot move %s to %s (%s); will retry", row.location, row.final_path, exc.strerror)
            failed.append(row)
        else:
            placed.append(row)
    try:
        for folder in folders:
            fsync_dir(folder)
    except OSError as exc:
        log.warning("cannot sync %d archive folders (%s); the moves are retried", len(folders), exc.strerror)
        return failed + placed
    for row in placed:
        _drop_source(home, row.location)
        row.location = row.final_path
        _moved(row, now)
    return failed


def _moved(row: File, now: datetime) -> None:
    row.moved_at = now
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
