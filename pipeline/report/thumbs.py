"""The report's thumbnails: beside the newest rows of a sheet, from the cache the review workbook shares
(`pipeline.images.thumbs`: made once per image content, safely decoded), shown at half size.

Example:
    >>> thumbs = Thumbnails(home, ThumbnailOptions(newest=2000, max_bytes=..., max_pixels=..., max_aspect=20.0))
    >>> floor = thumbs.floor(conn, latest_predictions_stmt())   # rows with an id from here on get one
    >>> table.append(row, thumbs.picture("archive/inbox/a.jpg", sha256))   # None: the row has none

A file that is not an image, or does not decode, gets no thumbnail and no error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline.images.thumbs import THUMB_PX, thumbnail
from pipeline.settings import ThumbnailOptions
from storage.queries import newest_floor

SHOWN_PX = THUMB_PX // 2  # the square a thumbnail is shown in
ROW_PT = 39  # the height of a row with a thumbnail: 52 px (a whole number: XlsxWriter rounds to pixels)


@dataclass(frozen=True)
class Thumb:
    """One thumbnail, ready to be placed in a cell (`Table.append(row, picture=thumb)`)."""

    name: str
    data: bytes
    width: int
    height: int

    def place(self, ws, row: int, col: int) -> None:
        # image_data, not the cached file's name: XlsxWriter reads it only when the workbook is closed.
        scale = SHOWN_PX / THUMB_PX
        ws.insert_image(row, col, self.name, {
            "image_data": io.BytesIO(self.data), "x_scale": scale, "y_scale": scale, "object_position": 1,
            "x_offset": 3 + (SHOWN_PX - round(self.width * scale)) // 2,
            "y_offset": 2 + (SHOWN_PX - round(self.height * scale)) // 2, "description": self.name})


class Thumbnails:
    """Thumbnails for the newest `options.newest` rows of a sheet."""

    def __init__(self, home: Path, options: ThumbnailOptions):
        self.home, self.options = home, options

    def floor(self, conn, stmt) -> int | None:
        """The id from which `stmt`'s rows get a thumbnail, or None for none (off, or no rows)."""
        return newest_floor(conn, stmt, self.options.newest) if self.options.newest > 0 else None

    def picture(self, path: str | None, sha256: str | None) -> Thumb | None:
        """The thumbnail of the file at `path` (relative to home) whose content hashes to `sha256`, or None."""
        if not path or not sha256:
            return None
        o = self.options
        cached = thumbnail(self.home, sha256, self.home / path, max_pixels=o.max_pixels, max_bytes=o.max_bytes,
                           max_aspect=o.max_aspect)
        if cached is None:
            return None
        try:
            data = cached.read_bytes()
            with Image.open(io.BytesIO(data)) as im:  # our own JPEG: its header, for centring
                width, height = im.size
        except OSError:  # removed meanwhile (the cache may be deleted at any time), or damaged
            return None
        return Thumb(f"{sha256[:16]}.jpg", data, width, height)
