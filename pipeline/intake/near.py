"""Near-duplicates among a drop folder's files: the earlier file an image looks like, found through the indexed
bands of its perceptual hash (pipeline.images.phash), never by reading every stored hash.

    >>> nearest(s, "inbox", h, 6, before=row.id)      # (file id, bits apart) of the closest earlier image, or None
    (1234, 2)

The inbox records what it finds on the new file's row (`looks_like`, `looks_like_bits`) in the same transaction
as its result (pipeline.intake.ingest, phase C), so a crash leaves both or neither.
"""

from __future__ import annotations

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from pipeline.images.phash import MAX_BITS, bands, distance, from_db, probes, to_db
from storage.tables import File

BAND_COLUMNS = (File.phash_b0, File.phash_b1, File.phash_b2, File.phash_b3)


def record_hash(row: File, h: int | None) -> None:
    """Store an image's hash and its bands on its row (None: nothing to store)."""
    if h is not None:
        row.phash = to_db(h)
        row.phash_b0, row.phash_b1, row.phash_b2, row.phash_b3 = bands(h)


def nearest(s: Session, folder: str, h: int, max_bits: int, *, before: int | None = None
            ) -> tuple[int, int] | None:
    """The file of `folder` (with an id below `before`) whose image is closest to `h`, at most `max_bits` apart:
    (its id, the bits apart); the lowest id among equals. None when there is none, or `max_bits` is 0 (off)."""
    if max_bits <= 0:
        return None
    best: tuple[int, int] | None = None
    for fid, stored, where in s.execute(_candidates(h, max_bits)):
        if where != folder or (before is not None and fid >= before):
            continue
        d = distance(h, from_db(stored))
        if d <= max_bits and (best is None or (d, fid) < (best[1], best[0])):
            best = (fid, d)
    return best


def _candidates(h: int, max_bits: int) -> Select:
    """The rows sharing a band value with a hash within `max_bits` of `h`: one indexed lookup per probed value.
    Folder and id are checked on the few rows this finds: in the WHERE clause, SQLite would rather walk every
    file of the folder through its own index."""
    max_bits = min(max_bits, MAX_BITS)
    near = [col.in_(probes(b, max_bits)) for col, b in zip(BAND_COLUMNS, bands(h))]
    return select(File.id, File.phash, File.folder).where(or_(*near))


def look_alike(s: Session, row: File, h: int | None, max_bits: int) -> bool:
    """Record `row`'s hash and, when an earlier file of its folder looks like it, which and how far: True then."""
    record_hash(row, h)
    found = None if h is None else nearest(s, row.folder, h, max_bits, before=row.id)
    row.looks_like, row.looks_like_bits = found if found else (None, None)
    return found is not None
