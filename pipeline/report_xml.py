"""The fast path for big sheets: rows as SpreadsheetML text, spliced into the workbook XlsxWriter made.

XlsxWriter spends ~7 µs on a cell; 100,000 predictions with 300,000 boxes are three million cells, half a
minute. A row written here as one string costs about what one XlsxWriter cell does. XlsxWriter still makes
everything else (styles, header, frozen pane, filter, widths, charts, pictures); `splice` then puts the rows
into each big sheet's <sheetData>, after its header row, and fixes the sheet's <dimension>. Only the OOXML
format is relied on, plus one XlsxWriter call (Format._get_xf_index) to learn a cell format's style number
before the workbook is closed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
       "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
       "p": "http://schemas.openxmlformats.org/package/2006/relationships"}
_DIMENSION = re.compile(rb'<dimension ref="[^"]*"/>')
_SPECIAL = re.compile(r'[&<>"]')
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def escape(text: str) -> str:
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text) if _SPECIAL.search(text) else text


def text_cell(ref: str, text: str) -> str:
    space = ' xml:space="preserve"' if text[:1].isspace() or text[-1:].isspace() else ""
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{escape(text)}</t></is></c>'


def number_cell(ref: str, value, style: int | None) -> str:
    s = f' s="{style}"' if style else ""
    return f'<c r="{ref}"{s}><v>{value!r}</v></c>'


def formula_cell(ref: str, formula: str, cached: str, style: int | None) -> str:
    s = f' s="{style}"' if style else ""
    return f'<c r="{ref}"{s} t="str"><f>{escape(formula)}</f><v>{escape(cached)}</v></c>'


class RowSpool:
    """Rows of one sheet, written to a temporary file as they come."""

    def __init__(self, folder: Path):
        self.fh = tempfile.TemporaryFile(dir=folder, prefix=".report-rows-")
        self.last_row = 1  # the header, written by XlsxWriter
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
                spool.fh.seek(0)
                shutil.copyfileobj(spool.fh, fh, 1 << 20)
                fh.write(sep + tail)


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
