"""Low-confidence images, copied to review/ with a pre-filled labelImg label, ready to correct.

    review/
      classes.txt     the model's class names, one per line (what labelImg writes and reads)
      cover.jpg       a copy of the inbox image; the original goes on to archive/ as usual
      cover.txt       one line per box, "%d %.6f %.6f %.6f %.6f": class cx cy w h, normalised

A person opens review/ in labelImg (YOLO format), fixes the boxes, and drops the pairs plus classes.txt into
labeled/. Names are never reused. If a new model brings other class names, its images go to review/<version>/
with their own classes.txt, so every folder stays consistent with its labels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path
from typing import BinaryIO

from PIL import ImageOps

from pipeline.images.decode import pillow_open
from pipeline.labels.formats import centre
from pipeline.inference.steps import read_file
from storage.files import write_atomically

log = logging.getLogger(__name__)

Box = tuple[int, float, float, float, float]  # class id, x1, y1, x2, y2 (normalised corners)


def write_review(folder: Path, source: Path, *, names: list[str], boxes: list[Box], orientation: int,
                 version: str, opened: BinaryIO | None = None) -> Path | None:
    """Copy `source` into `folder` with its label; returns the copy, or None when it could not be written.
    `opened`: `source` opened before its name could move (the ingest archives it meanwhile); read and closed here.

    >>> write_review(home / "review", inbox / "a.jpg", names=["comic", "novel"], boxes=[(1, .1, .2, .5, .9)],
    ...              orientation=1, version="v3")
    PosixPath('.../review/a.jpg')           # and review/a.txt: "1 0.300000 0.550000 0.400000 0.700000"
    """
    with opened or contextlib.nullcontext():
        try:
            target_dir = _folder_for(folder, names, version)
            image, label = _claim(target_dir, source.stem, source.suffix.lower())
        except OSError as exc:
            log.warning("review copy of %s not written: %s", source.name, exc)
            return None
        try:
            label.write_text("".join(label_line(*b) for b in boxes))
            _copy_image(opened.read() if opened is not None else read_file(source), image, orientation)
        except OSError as exc:
            log.warning("review copy of %s not written: %s", source.name, exc)
            for p in (image, label):
                p.unlink(missing_ok=True)
            return None
        return image


def label_line(cls: int, x1: float, y1: float, x2: float, y2: float) -> str:
    """labelImg's YOLO line: `%d %.6f %.6f %.6f %.6f` = class, centre x, centre y, width, height."""
    return "%d %.6f %.6f %.6f %.6f\n" % (cls, *centre(x1, y1, x2, y2))


def _folder_for(folder: Path, names: list[str], version: str) -> Path:
    text = "".join(f"{n}\n" for n in names)
    for candidate in (folder, folder / _safe(version)):
        classes = candidate / "classes.txt"
        candidate.mkdir(parents=True, exist_ok=True)
        if not classes.exists():
            write_atomically(classes, text)
            return candidate
        if classes.read_text() == text:
            return candidate
    raise OSError(f"{folder / _safe(version) / 'classes.txt'} lists other classes than model {version}")


def _safe(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", version)[:64] or "model"


def _claim(folder: Path, stem: str, suffix: str) -> tuple[Path, Path]:
    """Reserve `stem.txt` and `stem<suffix>` (or stem-1, stem-2...) with O_EXCL: two writers never share a name."""
    for n in range(100_000):
        name = stem if n == 0 else f"{stem}-{n}"
        if name.lower() == "classes":  # classes.txt is labelImg's class list, not a label
            continue
        label, image = folder / f"{name}.txt", folder / f"{name}{suffix}"
        if not _create(label):
            continue
        if _create(image):
            return image, label
        label.unlink()
    raise OSError(f"no free name for {stem}{suffix} in {folder}")


def _create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False


def _copy_image(data: bytes, image: Path, orientation: int) -> None:
    if orientation == 1:
        image.write_bytes(data)
        return
    # labelImg ignores EXIF orientation while our boxes (and training) use it: store the pixels upright.
    with pillow_open(io.BytesIO(data)) as img:
        fmt = img.format if img.format != "MPO" else "JPEG"
        upright = ImageOps.exif_transpose(img).convert("RGB")
    upright.save(image, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
