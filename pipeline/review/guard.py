"""Is a file dropped into labeled/ a plain .xlsx that is safe to hand to openpyxl? Checked on the zip itself,
before any XML is parsed. Each refusal is a `Rejected` with its reason code:

    workbook_macros     .xlsm/.xltm/.xlsb/.xlam, or a vbaProject / macro sheet / macro-enabled content type inside
    not_xlsx            .xls, .ods, ..., or not a zip with [Content_Types].xml and xl/workbook.xml (an encrypted
                        workbook is not a zip either)
    workbook_too_big    more than MAX_BYTES on disk, or more than MAX_MEMBERS parts
    zip_bomb            the parts unpack to more than MAX_UNPACKED, or one part is more than MAX_RATIO times
                        its packed size
    xml_bomb            a part declares a DOCTYPE or an ENTITY (no OOXML part needs one; entity expansion is
                        how an XML bomb grows)

Python's zipfile stops reading a part at its declared size, so the declared sizes checked here bound what
openpyxl can unpack later.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pipeline.errors import Rejected

XLSX = ".xlsx"
MACRO_SUFFIXES = frozenset({".xlsm", ".xltm", ".xlsb", ".xlam"})
OTHER_SPREADSHEETS = frozenset({".xls", ".xlt", ".ods", ".fods", ".xltx", ".numbers"})
WORKBOOK_EXTENSIONS = frozenset({XLSX}) | MACRO_SUFFIXES | OTHER_SPREADSHEETS
MAX_BYTES = 20 << 20
MAX_MEMBERS = 2_000
MAX_UNPACKED = 200 << 20
MAX_RATIO = 100
_RATIO_FLOOR = 1 << 20  # small parts compress far better than this without being bombs
_CHUNK = 1 << 16
_MARKERS = [m.encode(enc) for m in ("<!DOCTYPE", "<!ENTITY") for enc in ("utf-8", "utf-16-le", "utf-16-be")]
_OVERLAP = max(map(len, _MARKERS))


def check_workbook(path: Path) -> None:
    """Raise Rejected unless `path` is a plain .xlsx within the limits; reads the zip's directory and scans
    its parts for DOCTYPE/ENTITY declarations."""
    suffix = path.suffix.lower()
    if suffix in MACRO_SUFFIXES:
        raise Rejected("workbook_macros", f"{suffix} workbooks can hold macros and are never opened")
    if suffix != XLSX:
        raise Rejected("not_xlsx", f"{suffix} is not read: save the review workbook as .xlsx")
    if path.stat().st_size > MAX_BYTES:
        raise Rejected("workbook_too_big", f"{path.stat().st_size} bytes > {MAX_BYTES}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_directory(infos)
            for info in infos:
                _scan(zf, info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise Rejected("not_xlsx", f"not a readable .xlsx (zip): {exc}"[:200]) from None


def _check_directory(infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_MEMBERS:
        raise Rejected("workbook_too_big", f"{len(infos)} parts > {MAX_MEMBERS}")
    names = {i.filename.lower() for i in infos}
    if any(n.endswith("vbaproject.bin") or n.startswith("xl/macrosheets/") for n in names):
        raise Rejected("workbook_macros", "the workbook holds a macro project (vbaProject.bin or macro sheets)")
    if not {"[content_types].xml", "xl/workbook.xml"} <= names:
        raise Rejected("not_xlsx", "no [Content_Types].xml and xl/workbook.xml: not an Excel workbook")
    if any(i.flag_bits & 0x1 for i in infos):
        raise Rejected("not_xlsx", "the zip is encrypted")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > MAX_UNPACKED:
        raise Rejected("zip_bomb", f"the parts unpack to {unpacked} bytes > {MAX_UNPACKED}")
    for i in infos:
        if i.file_size > _RATIO_FLOOR and i.file_size > MAX_RATIO * max(1, i.compress_size):
            raise Rejected("zip_bomb", f"{i.filename}: {i.compress_size} bytes unpack to {i.file_size} "
                                       f"(more than {MAX_RATIO}x)")


def _scan(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    if info.is_dir() or info.filename.lower().endswith((".png", ".jpeg", ".jpg", ".gif", ".bin", ".emf", ".wmf")):
        return
    tail, types = b"", info.filename.lower() == "[content_types].xml"
    with zf.open(info) as part:
        while chunk := part.read(_CHUNK):
            window = tail + chunk
            if types and b"macroEnabled" in window:
                raise Rejected("workbook_macros", "the workbook's content types are macro-enabled")
            if any(m in window for m in _MARKERS):
                raise Rejected("xml_bomb", f"{info.filename}: declares a DOCTYPE or ENTITY; never parsed")
            tail = window[-_OVERLAP:]
