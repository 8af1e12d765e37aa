"""What a detect-home correction copies to review/: the latest prediction's boxes in the registry's class ids,
and the image's EXIF orientation (the boxes are upright; labelImg shows the stored pixels)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.images.decode import pillow_open
from storage.tables import Detection, File, Prediction

_ORIENTATION = 0x0112


def predicted_boxes(s: Session, home: Path, image: File, names: list[str]) -> tuple[list[tuple], int]:
    """([(class id, x1, y1, x2, y2)...], orientation) for `image`; boxes of classes not in `names` are left out."""
    latest = select(Prediction.id).where(Prediction.file_id == image.id).order_by(Prediction.id.desc()).limit(1)
    position = {n: i for i, n in enumerate(names)}
    boxes = [(position[d.class_name], d.x1, d.y1, d.x2, d.y2)
             for d in s.scalars(select(Detection).where(Detection.prediction_id == latest.scalar_subquery())
                                .order_by(Detection.id)) if d.class_name in position]
    return boxes, image_size_and_orientation(home / image.location)[1]


def image_size_and_orientation(path: Path) -> tuple[tuple[int, int], int]:
    """((width, height) upright, EXIF orientation) from the header alone; ((0, 0), 1) when it cannot be read."""
    try:
        with pillow_open(path) as img:
            orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
            w, h = img.size
    except (OSError, ValueError, SyntaxError):
        return (0, 0), 1
    return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)), orientation
