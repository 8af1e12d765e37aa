"""The review workbook: one row per archived image that needs a person, with a correct-class drop-down.

Example:
    >>> write_review_workbook(engine, home / "reports" / "review.xlsx", home=home, options=review_options(cfg))
    ReviewBook(path=PosixPath('.../reports/review.xlsx'), rows=12, total=12)
    >>> publish_review_workbook(engine, home / "reports", home=home, options=..., keep=48)  # dated + review-latest

An image needs a person when its latest prediction's confidence is below `model.review_below` (or a detector
found nothing), or when a source in FLAG_SOURCES names it; not when it was corrected already (a row taken, see
`layout.TAKEN`) or its picture has a label from a labelled drop. The least sure come first; at most `max_rows`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import xlsxwriter
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from pipeline.labels.classes import class_names
from pipeline.review.layout import (CORRECT, COLUMNS, HEADER_ROW, ID, LISTS, SHEET, SKIP, TAKEN, THUMB_PX, instructions,
                                    row_id)
from pipeline.images.thumbs import thumbnail
from pipeline.settings import ReviewOptions
from storage.db import session_scope
from storage.files import replacing
from storage.names import shown
from storage.tables import Correction, File, FileState, Prediction, Sample

log = logging.getLogger(__name__)

MAX_ROWS = 1000  # a workbook a person works through, not an export: the rest come in the next one
PREFIX, LATEST = "review-", "review-latest.xlsx"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ROW_PT = THUMB_PX * 0.75 + 6  # points: the thumbnail and a margin

# Why an image needs a person besides low confidence: each source takes a Session and yields (inbox file id,
# reason in words). The label-health findings (images whose label looks wrong) register theirs here.
FLAG_SOURCES: list[Callable[[Session], Iterable[tuple[int, str]]]] = []


@dataclass(frozen=True)
class Candidate:
    file_id: int
    sha256: str
    name: str
    location: str  # the archived image, relative to home
    predicted: str | None
    confidence: float | None
    top5: list
    why: str


@dataclass(frozen=True)
class ReviewBook:
    path: Path
    rows: int  # images listed
    total: int  # images that need a person (more than `rows` when over max_rows)


def candidates(s: Session, review_below: float, max_rows: int) -> tuple[list[Candidate], int]:
    """The images that need a person, least sure first, and how many there are in all."""
    flags: dict[int, str] = {}
    for source in FLAG_SOURCES:
        for file_id, reason in source(s):
            flags.setdefault(file_id, reason)
    low = or_(Prediction.confidence.is_(None), Prediction.confidence < review_below)
    stmt = _archived_predictions().where(or_(low, File.id.in_(list(flags))))
    total = s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = s.execute(stmt.order_by(func.coalesce(Prediction.confidence, -1.0), File.id).limit(max_rows))
    out = []
    for p, f in rows:
        why = flags.get(f.id) or ("nothing detected" if p.confidence is None else
                                  f"confidence {p.confidence:.0%} < {review_below:.0%}")
        out.append(Candidate(f.id, f.sha256, shown(f.original_name), f.location, p.predicted_class, p.confidence,
                             list(p.top5 or []), why))
    return out, total


def _archived_predictions():
    """Latest model predictions of inbox images in archive/, not corrected yet and not labelled otherwise."""
    latest = select(func.max(Prediction.id)).group_by(Prediction.file_id)
    taken = select(Correction.image_file_id).where(Correction.outcome.in_(TAKEN),
                                                   Correction.image_file_id.is_not(None))
    labelled = select(Sample.image_sha256).where(Sample.replaced_at.is_(None))
    return (select(Prediction, File).join(File, File.id == Prediction.file_id)
            .where(Prediction.id.in_(latest), Prediction.model_version.is_not(None), File.folder == "inbox",
                   File.state == FileState.processed.value, File.moved_at.is_not(None), File.location.is_not(None),
                   File.duplicate_of.is_(None), File.id.not_in(taken), File.sha256.not_in(labelled)))


def write_review_workbook(engine, out_path: Path, *, home: Path, options: ReviewOptions, max_rows: int = MAX_ROWS
                          ) -> ReviewBook:
    """Write the review workbook to `out_path` atomically (thumbnails cached under home/.thumbs)."""
    with session_scope(engine) as s:
        names = class_names(s)
        rows, total = candidates(s, options.review_below, max_rows)
    thumbs = [thumbnail(home, c.sha256, home / c.location, max_pixels=options.max_pixels)
              for c in rows]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out_path, durable=True) as tmp:
        _write(tmp, names, rows, thumbs, options.task, total)
    log.info("review workbook written: %s (%d of %d images that need a person)", out_path, len(rows), total)
    return ReviewBook(out_path, len(rows), total)


def publish_review_workbook(engine, folder: Path, *, home: Path, options: ReviewOptions, keep: int,
                            now: datetime | None = None) -> ReviewBook:
    """folder/review-YYYYMMDD-HHMM.xlsx, a copy as folder/review-latest.xlsx, the newest `keep` dated ones kept."""
    now = now or datetime.now(timezone.utc)
    folder = Path(folder)
    book = write_review_workbook(engine, folder / f"{PREFIX}{now.astimezone().strftime('%Y%m%d-%H%M')}.xlsx",
                                 home=home, options=options)
    with replacing(folder / LATEST) as tmp:
        shutil.copyfile(book.path, tmp)
    dated = sorted(p for p in folder.glob(f"{PREFIX}*.xlsx") if p.name != LATEST)
    for old in dated[: max(0, len(dated) - keep)]:
        old.unlink(missing_ok=True)
    return book


def _text(value) -> str:
    return _CONTROL.sub("\ufffd", shown(str(value)))[:32_767]


def _write(path: Path, names: list[str], rows: list[Candidate], thumbs: list[Path | None], task: str,
           total: int) -> None:
    wb = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False, "strings_to_formulas": False,
                                         "strings_to_urls": False})
    try:
        ws, lists = wb.add_worksheet(SHEET), wb.add_worksheet(LISTS)
        choices = [*names, SKIP]
        for i, name in enumerate(choices):
            lists.write_string(i, 0, _text(name))
        lists.hide()
        _head(wb, ws, task, len(rows), total)
        fmt = {"pct": wb.add_format({"num_format": "0%", "valign": "top"}),
               "text": wb.add_format({"valign": "top", "text_wrap": True}),
               "fill": wb.add_format({"bg_color": "#FFF2CC", "border": 1, "valign": "top"})}
        for r, (c, thumb) in enumerate(zip(rows, thumbs), HEADER_ROW + 1):
            _row(ws, r, c, thumb, fmt)
        if rows:
            col = COLUMNS.index(CORRECT)
            ws.data_validation(HEADER_ROW + 1, col, HEADER_ROW + len(rows), col, {
                "validate": "list", "source": f"={LISTS}!$A$1:$A${len(choices)}",
                "input_title": "correct class", "input_message": "Pick the class this image shows, or skip.",
                "error_title": "not a class", "error_message": "Pick a class from the list (or the skip entry).",
                "error_type": "stop"})
    finally:
        wb.close()


def _head(wb, ws, task: str, listed: int, total: int) -> None:
    how, what = instructions(task)
    if total > listed:
        what += f" Showing the {listed} least sure of {total} images that need a person; the rest come next time."
    bold = wb.add_format({"bold": True, "text_wrap": True, "valign": "top"})
    ws.merge_range(0, 0, 0, len(COLUMNS) - 1, how, bold)
    ws.merge_range(1, 0, 1, len(COLUMNS) - 1, what, wb.add_format({"text_wrap": True, "valign": "top"}))
    ws.set_row(0, 32)
    ws.set_row(1, 32)
    header = wb.add_format({"bold": True, "bg_color": "#DDEBF7", "bottom": 1})
    for col, name in enumerate(COLUMNS):
        ws.write_string(HEADER_ROW, col, name, header)
    widths = {"thumbnail": THUMB_PX / 7 + 2, "original_name": 28, "why": 24, ID: 18, CORRECT: 22}
    for col, name in enumerate(COLUMNS):
        ws.set_column(col, col, widths.get(name, 16))
    ws.freeze_panes(HEADER_ROW + 1, 0)
    ws.autofilter(HEADER_ROW, 0, HEADER_ROW, len(COLUMNS) - 1)
    ws.set_landscape()
    ws.fit_to_pages(1, 0)
    ws.repeat_rows(HEADER_ROW)


def _row(ws, r: int, c: Candidate, thumb: Path | None, fmt: dict) -> None:
    ws.set_row(r, _ROW_PT)
    if thumb is not None:
        ws.insert_image(r, 0, str(thumb), {"x_offset": 3, "y_offset": 3, "object_position": 1,
                                           "description": _text(c.name)})
    values = {"original_name": c.name, "predicted_class": c.predicted, "why": c.why, ID: row_id(c.file_id, c.sha256)}
    alternatives = [x for x in c.top5 if x and x[0] != c.predicted][:3]
    for i, (name, p) in enumerate(alternatives, 1):
        values[f"alternative {i}"] = f"{name} ({float(p):.0%})"
    for col, key in enumerate(COLUMNS):
        if key == "confidence" and c.confidence is not None:
            ws.write_number(r, col, c.confidence, fmt["pct"])
        elif key == CORRECT:
            ws.write_blank(r, col, None, fmt["fill"])
        elif values.get(key) is not None:
            ws.write_string(r, col, _text(values[key]), fmt["text"])
