"""Read the filled rows of a review workbook: openpyxl, read-only and values only, after `guard.check_workbook`.

Example:
    >>> read_review(home / "labeled" / "review.xlsx").rows
    [FilledRow(sheet_row=4, row_id='12-ab12cd34ef56', value='만화')]
"""

from __future__ import annotations

import unicodedata
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import Rejected
from pipeline.review.guard import check_workbook
from pipeline.review.layout import CORRECT, ID, SHEET

MAX_ROWS = 10_000  # more than any review workbook holds (pipeline.review.export.MAX_ROWS)
MAX_COLUMNS = 64
HEADER_WITHIN = 10  # rows: the header is the third, unless a person inserted some above it
MAX_VALUE = 200


@dataclass(frozen=True)
class FilledRow:
    sheet_row: int  # 1-based, as a person sees it
    row_id: str
    value: str  # what was chosen or typed, NFC, stripped


@dataclass(frozen=True)
class ReviewRows:
    rows: list[FilledRow]  # only the rows whose correct-class cell is filled
    listed: int  # rows with an id


def read_review(path: Path) -> ReviewRows:
    """The filled rows of the Review sheet; Rejected (with its reason code) for anything else."""
    check_workbook(path)
    from openpyxl import load_workbook  # only when a workbook arrives: the daemon starts without it

    try:
        wb = load_workbook(path, read_only=True, data_only=True, keep_links=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file may fail anywhere inside openpyxl; it is data
        raise Rejected("not_xlsx", f"openpyxl cannot read it: {type(exc).__name__}: {exc}"[:200]) from None
    try:
        if SHEET not in wb.sheetnames:
            raise Rejected("not_review_workbook", f"no sheet named {SHEET!r}: not a coverwatch review workbook")
        # The row reader holds the sheet's part of the .xlsx open, and wb.close() does not close a file a part
        # of it still reads: left mid-sheet (a refusal), it kept the file open through the Rejected's traceback
        # until the collector found it.
        with closing(wb[SHEET].iter_rows(max_col=MAX_COLUMNS, values_only=True)) as values:
            return _rows(values)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - as above: the sheet's XML is the dropper's
        raise Rejected("not_xlsx", f"openpyxl cannot read it: {type(exc).__name__}: {exc}"[:200]) from None
    finally:
        wb.close()


def _rows(values) -> ReviewRows:
    cols, out, listed = None, [], 0
    for n, row in enumerate(values, 1):
        if n > MAX_ROWS:
            raise Rejected("workbook_too_big", f"more than {MAX_ROWS} rows in the {SHEET} sheet")
        if cols is None:
            cols = _header(row)
            if cols is None and n >= HEADER_WITHIN:
                break
            continue
        rid, value = _cell(row, cols[0]), _cell(row, cols[1])
        listed += bool(rid)
        if value:
            out.append(FilledRow(n, rid[:64] if rid else f"(no id, row {n})", value[:MAX_VALUE]))
    if cols is None:
        raise Rejected("not_review_workbook", f"no header with {ID!r} and {CORRECT!r} in the {SHEET} sheet's "
                                              f"first {HEADER_WITHIN} rows")
    return ReviewRows(out, listed)


def _header(row: tuple) -> tuple[int, int] | None:
    names = [str(v).strip().lower() if v is not None else "" for v in row]
    if ID in names and CORRECT in names:
        return names.index(ID), names.index(CORRECT)
    return None


def _cell(row: tuple, i: int) -> str:
    v = row[i] if i < len(row) else None
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return unicodedata.normalize("NFC", str(v)).strip()
