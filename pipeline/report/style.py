"""How the report's tables look, and how rows are streamed into them (XlsxWriter, constant_memory).

constant_memory keeps one row of each sheet in memory, so a report over a million rows costs what one row
costs; the price is that every sheet is written strictly top to bottom. Tables that sit side by side on one
sheet are therefore written together, row by row (`write_blocks`).

Example:
    >>> book = Book(path, home=home, tz=None, low_confidence=0.4, max_rows=EXCEL_MAX_ROWS)
    >>> table = book.table("Predictions", [Column("original_name"), Column("confidence", "pct")])
    >>> table.extend(rows); table.close()
    >>> book.close()
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from pathlib import Path

import xlsxwriter
from xlsxwriter.utility import xl_col_to_name

from pipeline.report.cells import MAX_TEXT, NUMBER_WIDTH, cell_kind, clean_text, display_width
from pipeline.report.xml import RowSpool, formula_cell, number_cell, splice, style_of, text_cell
from storage.clock import as_utc

EXCEL_MAX_ROWS = 1_048_576  # header included
MAX_WIDTH = 60
_EPOCH = datetime(1899, 12, 30)
_MAX_LINK = 250  # HYPERLINK's string arguments stop at 255 characters in Excel
SHORT_ROW_PT = 15  # a row's usual height
STYLED = ("pct", "date", "float", "int", "link")  # the kinds written with a cell format


@dataclass(frozen=True)
class Column:
    """One column: its header and how its values are written (text, int, float, pct, date, link, any)."""

    name: str
    kind: str = "text"


class Book:
    """An XlsxWriter workbook with the report's formats, its clock and its paging rule."""

    def __init__(self, path: Path, *, home: Path, tz: tzinfo | None, low_confidence: float, max_rows: int):
        self.path = path
        # Paths in the database are relative to home; links are relative to the workbook's folder, so that
        # they keep working when the whole home is moved or shared.
        self.link_prefix = Path(os.path.relpath(home.resolve(), path.resolve().parent)).as_posix()
        self.tz = tz
        self.low_confidence = low_confidence
        self.max_rows = max(2, min(max_rows, EXCEL_MAX_ROWS))
        # strings_to_*: never guess; every cell is written with its type (a file named "=1+1.jpg" stays text).
        self._base = path.with_name(path.name + ".base")  # XlsxWriter's part; big sheets' rows go in after
        self._spools: dict[str, RowSpool] = {}
        self._closed = False
        self.wb = xlsxwriter.Workbook(str(self._base), {"constant_memory": True, "strings_to_numbers": False,
                                                  "strings_to_formulas": False, "strings_to_urls": False})
        add = self.wb.add_format
        self.fmt = {
            "header": add({"bold": True, "bg_color": "#DDEBF7", "bottom": 1, "text_wrap": False}),
            "pct": add({"num_format": "0.0%"}),
            "date": add({"num_format": "yyyy-mm-dd hh:mm:ss"}),
            "float": add({"num_format": "0.000"}),
            "int": add({"num_format": "#,##0"}),
            "link": add({"font_color": "#0563C1", "underline": 1}),
            "low": add({"bg_color": "#FFC7CE", "font_color": "#9C0006"}),
        }

    def sheet(self, name: str):
        """A new worksheet that prints readably: A4 landscape, one page wide, the header row on every page, and
        the sheet's name and page number in the footer."""
        ws = self.wb.add_worksheet(name[:31])
        ws.set_landscape()
        ws.set_paper(9)  # A4
        ws.fit_to_pages(1, 0)  # as wide as one page, as many pages long as it takes
        ws.repeat_rows(0)
        ws.set_footer("&L&A&R&P of &N")
        return ws

    def table(self, name: str, columns: Sequence[Column], *, row_height: float | None = None) -> Table:
        return Table(self, name, columns, row_height=row_height)

    def excel_date(self, value: datetime | date) -> float:
        """Local wall-clock time as an Excel serial number (Excel has no time zones). Written here because
        XlsxWriter 3.3 keeps its converter private (`utility._datetime_to_excel_datetime`)."""
        if not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        else:
            value = as_utc(value).astimezone(self.tz).replace(tzinfo=None)
        return (value - _EPOCH).total_seconds() / 86400

    def spool(self, sheet_name: str) -> RowSpool:
        self._spools[sheet_name] = spool = RowSpool(self.path.parent)
        return spool

    def close(self) -> None:
        """Write the workbook to `path`: XlsxWriter's part, then the spooled rows into it."""
        try:
            self._closed = True
            self.wb.close()
            if self._spools:
                splice(self._base, self.path, self._spools)
                self._base.unlink()
            else:
                os.replace(self._base, self.path)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary parts (after close, or instead of it when writing failed)."""
        if not self._closed:
            self._closed = True
            try:
                self.wb.close()  # the only way to have XlsxWriter close its own temporary row files
            except Exception:  # noqa: BLE001 - already failing; the first error is the one to report
                pass
        for spool in self._spools.values():
            spool.fh.close()
        self._spools.clear()
        try:
            self._base.unlink(missing_ok=True)
        except OSError:
            pass


class Table:
    """A header row and rows after it on one sheet, continued on "Name (2)", ... past `book.max_rows`.

    A table of its own sheet (`Book.table`) spools its rows as XML (see report_xml); its columns carry their
    kind's format, which is how the spooled cells learn their style number. Tables sharing a sheet
    (`write_blocks`) and the Summary write cells through XlsxWriter (`write_row`).
    """

    def __init__(self, book: Book, name: str, columns: Sequence[Column], *, ws=None, first_col: int = 0,
                 filter: bool = True, row_height: float | None = None):
        self.book, self.name, self.columns = book, name, list(columns)
        self.first_col, self.filter = first_col, filter
        # Rows with a picture are `row_height` points tall. XlsxWriter never sees the spooled rows, and anchors a
        # picture by the row heights it believes in: so that is the sheet's default height, and every row without
        # a picture says its own (the usual 15 points).
        self.row_height = row_height
        self._short = f' ht="{SHORT_ROW_PT}" customHeight="1"' if row_height else ""
        self.spooled = ws is None
        self.sheets: list[str] = []
        self.rows = 0  # data rows written in all
        self._ws, self._row, self._spool = None, 0, None
        if self.spooled and any(c.kind == "any" for c in self.columns):
            raise ValueError(f"{name}: a spooled table's cells take their column's format; 'any' has none")
        self._letters = [xl_col_to_name(first_col + i) for i in range(len(self.columns))]
        numbers = ("int", "float", "pct")
        self._plan = [(i, self._letters[i], "number" if c.kind in numbers else c.kind,
                       style_of(c.kind) if c.kind in numbers else "") for i, c in enumerate(self.columns)]
        # Room for the header and its filter button; numbers are not measured one by one.
        self._widths = [max(display_width(c.name) + 3, NUMBER_WIDTH.get(c.kind, 0)) for c in self.columns]
        self._open(ws)

    # -- writing -------------------------------------------------------------------------------------------

    def extend(self, rows: Iterable[Sequence]) -> None:
        for row in rows:
            self.append(row)

    def append(self, row: Sequence, picture=None) -> None:
        """One row; `picture` (with a `place(ws, row, col)`, e.g. `pipeline.report.thumbs.Thumb`) goes in its last
        column, on a table made with a `row_height`."""
        if self._row >= self.book.max_rows:
            self._finish()
            self._open(None)
        if self.spooled:
            self._spool_row(self._row, row, "" if picture is not None else self._short)
        else:
            self._write_cells(self._row, row)
        if picture is not None:
            picture.place(self._ws, self._row, self.first_col + len(self.columns) - 1)
        self._row += 1
        self.rows += 1

    def _spool_row(self, r: int, row: Sequence, attrs: str = "") -> None:
        # The hot loop of a big report (millions of cells): numbers and text inline, the rest by `_kind`.
        n = r + 1  # XML rows count from 1
        cells = []
        for i, letter, kind, style in self._plan:
            value = row[i]
            if value is None:
                continue
            if kind == "number":
                if value - value == 0:  # not NaN or infinite
                    cells.append(f'<c r="{letter}{n}"{style}><v>{value!r}</v></c>')
            elif kind == "text" and value.__class__ is str and value and value.isprintable():
                cells.append(text_cell(f"{letter}{n}", value[:MAX_TEXT]))
                if 2 * len(value) > self._widths[i]:  # cheap bound first: most cells are not the widest
                    self._track_width(i, display_width(value))
            else:
                self._spool_other(i, f"{letter}{n}", value, cells)
        self._spool.add(f'<row r="{n}"{attrs}>{"".join(cells)}</row>')
        self._spool.last_row = n

    def _spool_other(self, i: int, ref: str, value, cells: list[str]) -> None:
        kind = cell_kind(self.columns[i], value)
        if kind is None:
            return
        if kind == "text":
            text = clean_text(value)
            cells.append(text_cell(ref, text))
            self._track(i, text)
        elif kind == "date":
            cells.append(number_cell(ref, self.book.excel_date(value), "date"))
            self._track_width(i, 19)
        elif kind == "link":
            shown, link = self._link(value)
            cells.append(formula_cell(ref, link[1:], shown, "link") if link else text_cell(ref, shown))
            self._track(i, shown)
        else:
            cells.append(number_cell(ref, value, kind if kind in STYLED else None))

    def write_row(self, r: int, row: Sequence) -> None:
        """Row `r` (0-based, the header is 0) through XlsxWriter, on this table's one sheet (never paged: for
        the short tables of `write_blocks` and the Summary)."""
        self._write_cells(r, row)
        if r >= self._row:
            self.rows += r + 1 - self._row
            self._row = r + 1

    def _write_cells(self, r: int, row: Sequence) -> None:
        ws, fmt, c0 = self._ws, self.book.fmt, self.first_col
        for i, (col, value) in enumerate(zip(self.columns, row)):
            kind = cell_kind(col, value)
            if kind is None:
                continue
            if kind == "text":
                text = clean_text(value)
                ws.write_string(r, c0 + i, text)
                self._track(i, text)
            elif kind == "date":
                ws.write_number(r, c0 + i, self.book.excel_date(value), fmt["date"])
                self._track_width(i, 19)
            elif kind == "link":
                shown, link = self._link(value)
                if link:
                    ws.write_formula(r, c0 + i, link, fmt["link"], shown)
                else:
                    ws.write_string(r, c0 + i, shown)
                self._track(i, shown)
            else:
                ws.write_number(r, c0 + i, value, fmt.get(kind))
                self._track_width(i, 7 if kind == "pct" else len(f"{value:,.3f}" if kind == "float" else f"{value:,}"))

    def _track(self, i: int, text: str) -> None:
        if 2 * len(text) > self._widths[i]:  # cheap bound first: most cells are not the widest
            self._track_width(i, display_width(text))

    def _track_width(self, i: int, w: int) -> None:
        if w > self._widths[i]:
            self._widths[i] = w

    def _link(self, value) -> tuple[str, str | None]:
        """A link cell's text, and its HYPERLINK formula (None: too long for one) to the file at a path relative to
        home, relative to the workbook; cached value the text (so readers without a formula engine see it too).
        `value`: the path, shown as it is, or (text, path): a file name that opens its file. Real hyperlinks stop
        at 65,530 per sheet."""
        shown, path = (clean_text(v) for v in value) if isinstance(value, tuple) else (clean_text(value),) * 2
        prefix = self.book.link_prefix
        target = path if prefix == "." or os.path.isabs(path) else f"{prefix}/{path}"
        if len(target) > _MAX_LINK or len(shown) > _MAX_LINK:
            return shown, None
        t, p = target.replace('"', '""'), shown.replace('"', '""')
        return shown, f'=HYPERLINK("{t}","{p}")'

    def close(self) -> None:
        self._finish()

    # -- sheets --------------------------------------------------------------------------------------------

    def _open(self, ws) -> None:
        if ws is None:
            name = self.name if not self.sheets else f"{self.name} ({len(self.sheets) + 1})"
            ws = self.book.sheet(name)
        self.sheets.append(ws.get_name())
        self._ws = ws
        ws.freeze_panes(1, 0)
        if self.row_height:
            ws.set_default_row(self.row_height)
            ws.set_row(0, SHORT_ROW_PT)  # the header
        for i, col in enumerate(self.columns):
            ws.write_string(0, self.first_col + i, col.name, self.book.fmt["header"])
        if self.spooled:
            self._spool = self.book.spool(ws.get_name())
            for i, col in enumerate(self.columns):
                if col.kind in STYLED:
                    self._spool.styled.setdefault(col.kind, self.first_col + i + 1)
        self._row = 1

    def _finish(self) -> None:
        ws, c0, last = self._ws, self.first_col, self._row - 1
        ncols = len(self.columns)
        for i, (col, w) in enumerate(zip(self.columns, self._widths)):
            styled = self.spooled and col.kind in STYLED
            ws.set_column(c0 + i, c0 + i, min(MAX_WIDTH, w + 1), self.book.fmt[col.kind] if styled else None)
        if self.filter:
            ws.autofilter(0, c0, max(last, 1), c0 + ncols - 1)
        for i, col in enumerate(self.columns):
            if col.kind == "pct" and last >= 1:
                ws.conditional_format(1, c0 + i, last, c0 + i, {
                    "type": "cell", "criteria": "<", "value": self.book.low_confidence,
                    "format": self.book.fmt["low"]})

    @property
    def worksheet(self):
        return self._ws


def write_blocks(book: Book, name: str, blocks: Sequence[tuple[Sequence[Column], list[Sequence]]], *,
                 gap: int = 1) -> list[Table]:
    """Small tables side by side on one sheet, each with its own header; the first gets the auto-filter
    (Excel allows one per sheet). Rows go out in sheet order, as constant_memory requires."""
    ws = book.sheet(name)
    tables, col = [], 0
    for k, (columns, _rows) in enumerate(blocks):
        tables.append(Table(book, name, columns, ws=ws, first_col=col, filter=k == 0))
        col += len(columns) + gap
    height = max((len(rows) for _cols, rows in blocks), default=0)
    for r in range(height):
        for table, (_cols, rows) in zip(tables, blocks):
            if r < len(rows):
                table.write_row(r + 1, rows[r])
    for table in tables:
        table.close()
    return tables
