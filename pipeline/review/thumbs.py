"""Small thumbnails of archived images, made once per image content and kept under the home.

    HOME/.thumbs/ab/ab12...ef.jpg     96 px on the long side, EXIF orientation applied, JPEG

Keyed by content hash, so a picture archived twice, or listed in every hourly review workbook, is shrunk once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageOps

from pipeline.errors import Rejected
from pipeline.images.decode import open_checked
from storage.files import replacing

log = logging.getLogger(__name__)

FOLDER = ".thumbs"


def thumbnail(home: Path, sha256: str, source: Path, *, size: int, max_pixels: int) -> Path | None:
    """The cached thumbnail of `source` (content `sha256`), made now if missing; None when the image cannot be
    read (the row is still written, without a picture)."""
    path = home / FOLDER / sha256[:2] / f"{sha256}.jpg"
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as f:
            img = open_checked(f, max_pixels=max_pixels, before_load=lambda im: im.draft("RGB", (size, size)))
        small = ImageOps.exif_transpose(img).convert("RGB")
        small.thumbnail((size, size), Image.Resampling.LANCZOS)
        with replacing(path) as tmp:
            small.save(tmp, format="JPEG", quality=85)
    except (OSError, Rejected) as exc:
        log.warning("no thumbnail for %s: %s", source.name, exc)
        return None
    return path
