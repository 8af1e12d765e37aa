"""Small thumbnails of archived images, made once per image content and kept under the home, for the review
workbook (shown whole) and the report (at half size).

    HOME/.thumbs/ab/ab12...ef.jpg     THUMB_PX on the long side, upright, transparency on white, JPEG
    HOME/.thumbs/ab/ab12...ef.skip    this content gives no thumbnail (its reason code inside): not tried again

Keyed by content hash, so a picture archived twice, or listed in every hourly workbook, is shrunk once. The file
is opened as the inbox opens one (`pipeline.images.decode`: no symlink or FIFO, the size, pixel and aspect limits);
a JPEG decodes at 1/2 to 1/8 scale through Pillow's `draft`, so a 12 MP photo costs little. The cache may be
deleted at any time: it is made again.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image

from pipeline.errors import Rejected
from pipeline.images.decode import MAX_ASPECT, check_entry, open_checked, open_for_reading, to_rgb

log = logging.getLogger(__name__)

CACHE_DIR = ".thumbs"
THUMB_PX = 96
SKIP = ".skip"
MAX_BYTES = 50 * 1024 * 1024  # watch.max_bytes' default


def thumbnail(home: Path, sha256: str, source: Path, *, max_pixels: int, max_bytes: int = MAX_BYTES,
              max_aspect: float = MAX_ASPECT) -> Path | None:
    """The cached thumbnail of `source` (content `sha256`), made now if missing; None when the file gives none
    (not an image, too big, corrupt: noted, never tried again; missing or unreadable now: tried next time)."""
    if len(sha256) != 64 or not sha256.isalnum():
        return None
    path = home / CACHE_DIR / sha256[:2] / f"{sha256}.jpg"
    if path.is_file():
        return path
    if path.with_suffix(SKIP).is_file():
        return None
    try:
        data = make_thumbnail(source, max_pixels=max_pixels, max_bytes=max_bytes, max_aspect=max_aspect)
    except Rejected as exc:
        log.info("no thumbnail for %s: %s", source.name, exc.code)
        _store(path.with_suffix(SKIP), f"{exc.code}\n".encode())
        return None
    except OSError as exc:
        log.debug("no thumbnail for %s now: %s", source.name, exc)
        return None
    return path if _store(path, data) else None  # a cache that cannot be written (read-only home): none


def make_thumbnail(source: Path, *, max_pixels: int, max_bytes: int = MAX_BYTES, max_aspect: float = MAX_ASPECT
                   ) -> bytes:
    """A JPEG of `source` THUMB_PX on its long side; raises Rejected (not an image, too big, a bomb, corrupt) or
    OSError."""
    check_entry(source, max_bytes=max_bytes)  # on lstat and the name: no byte read yet
    with os.fdopen(open_for_reading(source), "rb") as fh:
        img = open_checked(fh, max_pixels=max_pixels, max_aspect=max_aspect, before_load=_draft)
    small = Image.fromarray(to_rgb(img).rgb)
    small.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=85)
    return out.getvalue()


def _draft(img: Image.Image) -> None:
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (THUMB_PX, THUMB_PX))  # the smallest DCT scale still at least this big


def _store(dest: Path, data: bytes) -> bool:
    """Write atomically (several workers share a home); False when the cache cannot be written."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return True
    except OSError as exc:
        log.debug("cannot cache a thumbnail in %s: %s", dest.parent, exc)
        tmp.unlink(missing_ok=True)
        return False

