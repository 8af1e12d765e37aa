"""The fast path for big sheets: rows as SpreadsheetML text, spliced into the workbook XlsxWriter made.

XlsxWriter spends ~7 µs on a cell; 100,000 predictions with 300,000 boxes are three million cells, half a
minute. A row written here as one string costs about what one XlsxWriter cell does. XlsxWriter still makes
everything else (styles, header, frozen pane, filter, widths, charts, pictures); `splice` then puts the rows
into each big sheet's <sheetData>, after its header row, and fixes the sheet's <dimension>. Only the OOXML
format is relied on: a spooled cell names its style by kind (` s="pct"`), and `splice` swaps in the style
number XlsxWriter gave that kind's column format (`worksheet.set_column(..., format)`, in the sheet's <cols>).
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
       "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
       "p": "http://schemas.openxmlformats.org/package/2006/relationships"}
_DIMENSION = re.compile(rb'<dimension ref="[^"]*"/>')
_COL_STYLE = re.compile(rb'<col min="(\d+)" max="(\d+)"[^>]*? style="(\d+)"')
_CHUNK = 1 << 20
_SPECIAL = re.compile(r'[&<>"]')
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def escape(text: str) -> str:
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text) if _SPECIAL.search(text) else text


def text_cell(ref: str, text: str) -> str:
    space = ' xml:space="preserve"' if text[:1].isspace() or text[-1:].isspace() else ""
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{escape(text)}</t></is></c>'


def style_of(kind: str | None) -> str:
    """The style attribute of a spooled cell: its kind for now, the style number once spliced. Text is escaped
    (`"` is `&quot;`), so the attribute never occurs inside a cell's value."""
    return f' s="{kind}"' if kind else ""


def number_cell(ref: str, value, kind: str | None) -> str:
    return f'<c r="{ref}"{style_of(kind)}><v>{value!r}</v></c>'


def formula_cell(ref: str, formula: str, cached: str, kind: str | None) -> str:
    return f'<c r="{ref}"{style_of(kind)} t="str"><f>{escape(formula)}</f><v>{escape(cached)}</v></c>'


class RowSpool:
    """Rows of one sheet, written to a temporary file as they come."""

    def __init__(self, folder: Path):
        self.fh = tempfile.TemporaryFile(dir=folder, prefix=".report-rows-")
        self.last_row = 1  # the header, written by XlsxWriter
        self.styled: dict[str, int] = {}  # cell kind -> a column (1-based) formatted as that kind
        self._buf: list[str] = []

    def add(self, row_xml: str) -> None:
        self._buf.append(row_xml)
        if len(self._buf) >= 2000:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.fh.write("".join(self._buf).encode("utf-8"))
            self._buf.clear()


def splice(base: Path, out: Path, spools: dict[str, RowSpool]) -> None:
    """Copy the workbook `base` to `out`, appending each spool's rows to the sheet of that name."""
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zout:
        parts = _sheet_parts(zin)
        by_part = {parts[name]: spool for name, spool in spools.items()}
        for info in zin.infolist():
            spool = by_part.get(info.filename)
            if spool is None:
                zout.writestr(info, zin.read(info.filename))
                continue
            spool.flush()
            head, sep, tail = zin.read(info.filename).partition(b"</sheetData>")
            if not sep:
                raise ValueError(f"{info.filename}: no <sheetData> to add rows to")
            head = _DIMENSION.sub(lambda m: _dimension(m.group(), spool.last_row), head, count=1)
            target = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            target.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(target, "w", force_zip64=True) as fh:
                fh.write(head)
                _copy_rows(spool, _styles(head, spool.styled), fh)
                fh.write(sep + tail)


def _styles(head: bytes, styled: dict[str, int]) -> list[tuple[bytes, bytes]]:
    """(kind attribute, number attribute) for each kind of cell in the spool, from the sheet's <cols>."""
    by_col = {}
    for m in _COL_STYLE.finditer(head):
        for col in range(int(m[1]), int(m[2]) + 1):
            by_col[col] = m[3].decode()
    return [(style_of(kind).encode(), style_of(by_col.get(col, "0")).encode()) for kind, col in styled.items()]


def _copy_rows(spool: RowSpool, styles: list[tuple[bytes, bytes]], out) -> None:
    """The spooled rows with their style numbers, a chunk at a time; a chunk ends after a `>`, so no style
    attribute is cut in two."""
    spool.fh.seek(0)
    rest = b""
    while chunk := spool.fh.read(_CHUNK):
        chunk = rest + chunk
        end = chunk.rfind(b">") + 1
        chunk, rest = chunk[:end], chunk[end:]
        for kind, number in styles:
            chunk = chunk.replace(kind, number)
        out.write(chunk)
    out.write(rest)


def _dimension(tag: bytes, last_row: int) -> bytes:
    ref = tag.split(b'"')[1].decode()
    first, _, last = ref.partition(":")
    last_col = re.sub(r"\d+", "", last or first)
    return f'<dimension ref="{first}:{last_col}{last_row}"/>'.encode()


def _sheet_parts(z: zipfile.ZipFile) -> dict[str, str]:
    """Sheet name -> its part in the package, from workbook.xml and its relationships."""
    book = ElementTree.fromstring(z.read("xl/workbook.xml"))
    rels = ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels"))
    targets = {r.get("Id"): r.get("Target") for r in rels.findall("p:Relationship", _NS)}
    out = {}
    for sheet in book.iterfind("m:sheets/m:sheet", _NS):
        target = targets[sheet.get(f"{{{_NS['r']}}}id")]
        out[sheet.get("name")] = target.lstrip("/") if target.startswith("/") else str(PurePosixPath("xl") / target)
    return out
