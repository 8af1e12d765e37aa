"""What one cell holds: its text made safe for the XML, its on-screen width, how a value is written."""

from __future__ import annotations

import math
import re
from datetime import date, datetime

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # surrogates: bytes of a name that are not UTF-8
MAX_TEXT = 32_767  # Excel's limit for one cell
NUMBER_WIDTH = {"pct": 7, "float": 8, "int": 9, "date": 19}  # numbers are not measured one by one


def display_width(text: str) -> int:
    """About the columns a string takes on screen: Hangul and other wide characters count twice.

    Estimated from the UTF-8 length (wide scripts take 3 bytes a character, narrow ones 1 or 2), because
    it is measured on every cell of a sheet that may hold a million rows.
    """
    n = len(text)
    return n if text.isascii() else n + (len(text.encode("utf-8", "surrogatepass")) - n) // 2


def clean_text(value) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = _CONTROL.sub("\ufffd", text)  # such characters would make the XML invalid
    return text[:MAX_TEXT]


def cell_kind(col, value) -> str | None:
    """How to write this value, or None for a blank cell."""
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return kind_of(value) if col.kind == "any" else col.kind


def kind_of(value) -> str:
    if isinstance(value, bool):
        return "text"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (datetime, date)):
        return "date"
    return "text"
