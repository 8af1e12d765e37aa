"""Near-duplicates among a drop folder's files: the earlier file an image looks like, found through the indexed
bands of its perceptual hash (pipeline.images.phash), never by reading every stored hash.

    >>> nearest(s, "inbox", h, 6, before=row.id)      # (file id, bits apart) of the closest earlier image, or None
    (1234, 2)

The inbox records what it finds on the new file's row (`looks_like`, `looks_like_bits`) in the same transaction
as its result (pipeline.intake.ingest, phase C), so a crash leaves both or neither.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text
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
    return nearest_each(s, folder, [(before, h)], max_bits)[0]


def nearest_each(s: Session, folder: str, queries: list[tuple[int | None, int]], max_bits: int
                 ) -> list[tuple[int, int] | None]:
    """`nearest` for each (before, hash) of `queries`, through one lookup of the rows their probed bands find
    (every true match shares a probed band value with its own hash, so it is among them)."""
    if max_bits <= 0 or not queries:
        return [None] * len(queries)
    rows = [(fid, from_db(stored)) for fid, stored, where in s.execute(_candidates([h for _, h in queries], max_bits))
            if where == folder]
    out = []
    for before, h in queries:
        best: tuple[int, int] | None = None
        for fid, stored in rows:
            if before is not None and fid >= before:
                continue
            d = distance(h, stored)
            if d <= max_bits and (best is None or (d, fid) < (best[1], best[0])):
                best = (fid, d)
        out.append(best)
    return out


def _candidates(hashes: list[int], max_bits: int) -> TextClause:
    """The rows sharing a band value with a hash within `max_bits` of one of `hashes`: indexed lookups of the
    probed values. Folder and id are checked on the few rows this finds: in the WHERE clause, SQLite would rather
    walk every file of the folder through its own index.

    The probed values (~1,100 for a chunk of 16 at 6 bits) are written into the SQL as integer literals: as
    bound parameters, expanding them cost more than the rest of the commit of a chunk. They are ints this
    module computed, never text from outside."""
    max_bits = min(max_bits, MAX_BITS)
    values: list[set[int]] = [set() for _ in BAND_COLUMNS]
    for h in hashes:
        for k, b in enumerate(bands(h)):
            values[k].update(probes(b, max_bits))
    where = " OR ".join(f"{col.name} IN ({','.join(map(str, sorted(int(x) for x in v)))})"
                        for col, v in zip(BAND_COLUMNS, values))
    t = File.__table__
    return text(f"SELECT {t.c.id.name}, {t.c.phash.name}, {t.c.folder.name} FROM {t.name} WHERE {where}")


def look_alike(s: Session, found: list[tuple[File, int | None]], max_bits: int) -> list[File]:
    """Record each row's hash and, when an earlier file of its folder (a lower id) looks like it, which and how
    far; returns the rows that look like one. The hashes are flushed once, then one lookup serves the batch:
    one flush and one query per batch instead of one each per image; rows of this batch count as earlier."""
    for row, h in found:
        record_hash(row, h)
    s.flush()
    out = []
    for folder in {row.folder for row, _h in found}:
        mine = [(row, h) for row, h in found if row.folder == folder and h is not None]
        with s.no_autoflush:
            hits = nearest_each(s, folder, [(row.id, h) for row, h in mine], max_bits)
        for (row, _h), hit in zip(mine, hits):
            row.looks_like, row.looks_like_bits = hit if hit else (None, None)
            if hit:
                out.append(row)
    return out
