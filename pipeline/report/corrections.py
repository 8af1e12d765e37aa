"""The report's part on corrections from the spreadsheet: how many labels came from review workbooks (Summary),
and every recorded row with its outcome (the Corrections sheet), so a row that was not used is seen."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.report.style import Book, Column, Table, write_blocks
from pipeline.review.layout import OUTCOMES, SOURCE_FORMAT, TAKEN
from storage.tables import Correction, File, Label

CORRECTIONS = [Column("time", "date"), Column("workbook"), Column("sheet_row", "int"), Column("row_id"),
               Column("original_name"), Column("class"), Column("outcome"), Column("explanation"), Column("detail")]


def correction_figures(s: Session) -> dict:
    """labels: labels in force that came from review workbooks; outcomes: recorded rows per outcome."""
    labels = s.scalar(select(func.count(Label.id)).where(Label.source_format == SOURCE_FORMAT,
                                                         Label.replaced_at.is_(None))) or 0
    outcomes = dict(s.execute(select(Correction.outcome, func.count()).group_by(Correction.outcome)).all())
    return {"labels": labels, "outcomes": outcomes}


def correction_items(figures: dict) -> list[tuple[str, object]]:
    """Summary lines: the figure, and a warning when rows could not be used."""
    items: list[tuple[str, object]] = [("labels from spreadsheets", figures["labels"])]
    unused = {k: n for k, n in figures["outcomes"].items() if k not in TAKEN}
    if unused:
        what = ", ".join(f"{k} ({n})" for k, n in sorted(unused.items()))
        items.append(("warning", f"{sum(unused.values())} rows of review workbooks were not used: {what}. "
                                 f"See the Corrections sheet."))
    return items


def corrections_sheet(book: Book, s: Session) -> list[Table]:
    """One row per recorded correction, newest first."""
    stmt = (select(Correction.created_at, Correction.workbook_name, Correction.sheet_row, Correction.row_id,
                   File.original_name, Correction.class_name, Correction.outcome, Correction.detail)
            .outerjoin(File, File.id == Correction.image_file_id).order_by(Correction.id.desc()))
    rows = [[t, wb, r, rid, name, cls, outcome, OUTCOMES.get(outcome), detail]
            for t, wb, r, rid, name, cls, outcome, detail in s.execute(stmt)]
    return write_blocks(book, "Corrections", [(CORRECTIONS, rows)])
