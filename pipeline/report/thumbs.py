"""The report's thumbnails: made once per image, cached under the home by the image's sha256, placed in a row.

Example:
    >>> thumbs = Thumbnails(home, ThumbnailOptions(newest=2000, max_bytes=..., max_pixels=..., max_aspect=20.0))
    >>> floor = thumbs.floor(conn, latest_predictions_stmt())   # rows with an id from here on get one
    >>> table.append(row, thumbs.picture("archive/inbox/a.jpg", sha256))   # None: the row has none
    >>> thumbs.prune()                                           # after the report: drop what it no longer shows

A file is decoded only through `pipeline.images` (no symlink, no FIFO, the inbox's size, pixel and aspect
limits; a JPEG at 1/2 to 1/8 of its size through Pillow's `draft`). One that is not an image, or does not decode,
gets no thumbnail and no error, and a note in the cache so that the next report does not try again.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from pipeline.errors import Rejected
from pipeline.images.decode import check_entry, open_checked, open_for_reading, to_rgb
from pipeline.settings import ThumbnailOptions
from storage.queries import newest_floor

log = logging.getLogger(__name__)

CACHE_DIR = ".thumbs"
THUMB_PX = 48  # the square a thumbnail is padded to
ROW_PT = 39  # the height of a row with a thumbnail: 52 px (a whole number: XlsxWriter rounds to pixels)
_SKIP = ".skip"  # the note left for a file that gives no thumbnail


@dataclass(frozen=True)
class Thumb:
    """One thumbnail, ready to be placed in a cell (`Table.append(row, picture=thumb)`)."""

    name: str
    data: bytes

    def place(self, ws, row: int, col: int) -> None:
        # image_data, not the cached file: another report may prune the cache before XlsxWriter reads it.
        ws.insert_image(row, col, self.name, {"image_data": io.BytesIO(self.data), "x_offset": 3, "y_offset": 2,
                                              "object_position": 1, "description": self.name})


class Thumbnails:
    """Thumbnails for the newest `options.newest` rows of a sheet, from the cache under `home/.thumbs/`."""

    def __init__(self, home: Path, options: ThumbnailOptions):
        self.home, self.options = home, options
        self.folder = home / CACHE_DIR
        self.made = self.cached = self.skipped = 0
        self._seen: set[str] = set()  # the sha256 of every image this report looked up

    def floor(self, conn, stmt) -> int | None:
        """The id from which `stmt`'s rows get a thumbnail, or None for none (off, or no rows)."""
        return newest_floor(conn, stmt, self.options.newest) if self.options.newest > 0 else None

    def picture(self, path: str | None, sha256: str | None) -> Thumb | None:
        """The thumbnail of the file at `path` (relative to home) whose content hashes to `sha256`, or None."""
        if not path or not sha256 or len(sha256) != 64 or not sha256.isalnum():
            return None
        self._seen.add(sha256)
        cached = self._cached(sha256)
        if cached.is_file():
            self.cached += 1
            return Thumb(f"{sha256[:16]}.jpg", cached.read_bytes())
        if cached.with_suffix(_SKIP).is_file():
            self.skipped += 1
            return None
        try:
            data = make_thumbnail(self.home / path, self.options)
        except Rejected as exc:
            self.skipped += 1
            self._store(cached.with_suffix(_SKIP), f"{exc.code}\n".encode())
            return None
        except OSError as exc:  # gone, unreadable, a share that is down: perhaps not next time, so no note
            log.debug("no thumbnail for %s: %s", path, exc)
            self.skipped += 1
            return None
        self.made += 1
        self._store(cached, data)
        return Thumb(f"{sha256[:16]}.jpg", data)

    def prune(self) -> int:
        """Remove the cached thumbnails (and notes) of images this report did not show; returns how many."""
        if not self._seen or not self.folder.is_dir():
            return 0
        removed = 0
        for entry in self.folder.glob("*/*"):
            if entry.stem not in self._seen and entry.suffix in (".jpg", _SKIP):
                try:
                    entry.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed

    def _cached(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.jpg"

    def _store(self, dest: Path, data: bytes) -> None:
        """Write atomically (several workers share a home); a cache that cannot be written only costs time."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except OSError as exc:
            log.debug("cannot cache a thumbnail in %s: %s", dest.parent, exc)
            tmp.unlink(missing_ok=True)


def make_thumbnail(path: Path, options: ThumbnailOptions) -> bytes:
    """A THUMB_PX square JPEG of the image at `path`, upright and on white; raises Rejected (not an image, too big,
    a bomb, corrupt) or OSError."""
    check_entry(path, max_bytes=options.max_bytes)  # on lstat and the name: no byte read yet
    with os.fdopen(open_for_reading(path), "rb") as fh:
        img = open_checked(fh, max_pixels=options.max_pixels, max_aspect=options.max_aspect, before_load=_draft)
    small = Image.fromarray(to_rgb(img).rgb)
    small = ImageOps.pad(small, (THUMB_PX, THUMB_PX), color="white")
    out = io.BytesIO()
    small.save(out, "JPEG", quality=85)
    return out.getvalue()


def _draft(img: Image.Image) -> None:
    """A JPEG decodes at the smallest of 1/2 .. 1/8 scale still twice the thumbnail: a 12 MP photo costs little."""
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (2 * THUMB_PX, 2 * THUMB_PX))
