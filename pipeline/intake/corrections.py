"""Review workbooks in labeled/: one more kind of labelled drop, on the same intake path (`pipeline.intake.labelled`).

    B  decide   `read_workbook`: the guard and openpyxl (pipeline.review.read); a bad workbook is quarantined
                with its reason, a good one hands over its filled rows
    C  commit   `record_corrections`, in the drop's one transaction: one `corrections` row per row id, claimed
                first (a unique index on the workbook's content and the row id: the same workbook dropped
                twice records nothing new); then, for a classify home, a `files` row (folder "correction",
                the archived image's location) per label, which the caller records as a Sample like any
                other drop; for a detect home, a copy of the image in review/ to draw its boxes
    D  move     the workbook goes to archive/labeled/ like any processed file

A row is never guessed: an unknown class, an id that names no image, an image gone from archive/ are recorded
with their outcome (pipeline.review.layout.OUTCOMES), logged, and listed in the report.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.errors import Rejected
from pipeline.intake.core import insert_once
from pipeline.labels.classes import class_names
from pipeline.review.layout import SKIP, TAKEN, parse_row_id
from pipeline.review.read import FilledRow, ReviewRows, read_review
from pipeline.settings import ReviewOptions
from storage.names import shown
from storage.tables import CORRECTION_FOLDER, Correction, File, FileState, Label, Prediction

log = logging.getLogger(__name__)


@dataclass
class CorrectionLabel:
    """A label to record as a Sample: `image` is its new files row (folder "correction")."""

    image: File
    class_name: str
    width: int
    height: int


def read_workbook(path: Path) -> ReviewRows | Rejected:
    """Phase B: the workbook's filled rows, or why it is refused (OSError passes: retried or vanished)."""
    try:
        return read_review(path)
    except Rejected as exc:
        return exc


def record_corrections(s: Session, home: Path, workbook: File, read: ReviewRows, options: ReviewOptions | None,
                       now: datetime) -> list[CorrectionLabel]:
    """Phase C: record every filled row of `workbook` once and set the workbook's final state (processed);
    return the labels the caller records as Samples. `options` None: a classify home without review copies."""
    task = options.task if options is not None else "classify"
    names = set(class_names(s))
    rows = [_decide(s, home, workbook, group, names, task) for group in _by_id(read.rows).values()]
    if not insert_once(s, [c for c, _image in rows]):  # this workbook content was recorded before
        _finish(workbook, _already_read(s, workbook))
        return []
    labels = []
    for c, image in rows:
        if c.outcome == "labelled":
            labels.append(_label_row(s, home, workbook, c, image, now))
        elif c.outcome == "review_copy":
            c.detail = _review_copy(s, home, image, options)
        if c.outcome not in TAKEN:
            log.warning("%s row %d: %s (%s)", shown(workbook.original_name), c.sheet_row, c.outcome, c.detail)
    counts = Counter(c.outcome for c, _ in rows)
    done = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
    _finish(workbook, f"review workbook: {len(read.rows)} filled of {read.listed} rows: {done}")
    return labels


def _by_id(rows: list[FilledRow]) -> dict[str, list[FilledRow]]:
    out: dict[str, list[FilledRow]] = {}
    for r in rows:
        out.setdefault(r.row_id, []).append(r)
    return out


def _decide(s: Session, home: Path, workbook: File, group: list[FilledRow], names: set[str], task: str
            ) -> tuple[Correction, File | None]:
    first = group[0]
    image = _image(s, first.row_id)
    c = Correction(workbook_file_id=workbook.id, workbook_sha256=workbook.sha256,
                   workbook_name=workbook.original_name, sheet_row=first.sheet_row, row_id=first.row_id,
                   image_file_id=image.id if image else None, class_name=first.value)
    c.outcome, c.detail = _outcome(s, home, image, group, names, task)
    return c, image


def _outcome(s: Session, home: Path, image: File | None, group: list[FilledRow], names: set[str], task: str
             ) -> tuple[str, str | None]:
    value = group[0].value
    if len({r.value for r in group}) > 1:
        return "conflicting_rows", "; ".join(f"row {r.sheet_row}: {r.value}" for r in group)
    if image is None:
        return "unknown_row_id", f"id {group[0].row_id!r} names no classified image"
    if value == SKIP:
        return "skipped", None
    if value not in names:
        return "unknown_class", f"{value!r} is not a class ({len(names)} classes known)"
    if image.location is None or not os.path.isfile(home / image.location):
        return "image_gone", f"{image.final_path or image.original_name} is no longer in archive/"
    if task == "detect":
        return "review_copy", None
    live = sorted(s.scalars(select(Label.class_name).where(Label.image_sha256 == image.sha256,
                                                           Label.replaced_at.is_(None))))
    if live == [value]:
        return "unchanged", f"already labelled {value}"
    return "labelled", f"was {', '.join(live)}" if live else None


def _image(s: Session, rid: str) -> File | None:
    """The archived inbox image a row id names: its file id, and a content hash that starts as the id says."""
    parsed = parse_row_id(rid)
    if parsed is None:
        return None
    f = s.get(File, parsed[0])
    if f is None or f.folder != "inbox" or f.state != FileState.processed.value or not (f.sha256 or "").startswith(
            parsed[1]):
        return None
    return f


def _already_read(s: Session, workbook: File) -> str:
    earlier = s.scalar(select(Correction).where(Correction.workbook_sha256 == workbook.sha256)
                       .order_by(Correction.id).limit(1))
    when = earlier.created_at.strftime("%Y-%m-%d %H:%M") if earlier else "before"
    name = shown(earlier.workbook_name) if earlier else "another workbook"
    log.info("%s: the same content as %s, read %s: nothing new", shown(workbook.original_name), name, when)
    return f"review workbook already read ({name}, {when}): nothing new"


def _label_row(s: Session, home: Path, workbook: File, c: Correction, image: File, now: datetime
               ) -> CorrectionLabel:
    row = File(folder=CORRECTION_FOLDER, source_path=f"{workbook.source_path}#{c.row_id}",
               original_name=image.original_name, size=image.size, mtime_ns=image.mtime_ns, sha256=image.sha256,
               state=FileState.processed.value, location=image.location, moved_at=now, processed_at=now)
    s.add(row)
    s.flush()
    c.label_file_id = row.id
    size = s.execute(select(Prediction.width, Prediction.height).where(Prediction.file_id == image.id)
                     .order_by(Prediction.id.desc()).limit(1)).first()
    if size and size[0]:
        width, height = size
    else:  # recorded before sizes were, or by a step that does not decode
        from pipeline.review.boxes import image_size_and_orientation

        (width, height), _ = image_size_and_orientation(home / image.location)
    return CorrectionLabel(row, c.class_name, width, height)


def _review_copy(s: Session, home: Path, image: File, options: ReviewOptions | None) -> str:
    """Detect: the image goes to review/ with the latest prediction's boxes, for labelImg."""
    from pipeline.inference.review import write_review
    from pipeline.review.boxes import predicted_boxes

    if options is None:
        return "no review folder configured: not copied"
    names = class_names(s)
    boxes, orientation = predicted_boxes(s, home, image, names)
    copy = write_review(options.review_dir, home / image.location, names=names, boxes=boxes,
                        orientation=orientation, version="corrections")
    return f"copied to {copy.relative_to(options.review_dir.parent) if copy else 'nowhere (see the log)'}"


def _finish(workbook: File, detail: str) -> None:
    workbook.state, workbook.reason, workbook.detail = FileState.processed.value, None, detail
