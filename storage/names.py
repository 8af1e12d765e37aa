"""File names that are not UTF-8: kept exactly in the database, shown with replacement characters.

Python hands such a name over with each undecodable byte as a lone surrogate (U+DC80..U+DCFF, PEP 383's
surrogateescape), which is what `os` needs to find the file again; no database driver accepts it. So a path
column stores each such byte as `//XX` (two upper-case hex digits): a stored path is relative and normalised
and a name never holds a `/`, so `//` appears in no path that is valid UTF-8, and every stored value from
before reads back unchanged. The mapping is per character, so equality, IN and prefix matches in SQL still
work on the stored form.

    >>> raw = b"\\xc7\\xa5\\xc1\\xf6.jpg".decode("utf-8", "surrogateescape")  # 표지.jpg as cp949 writes it
    >>> to_db(raw), from_db(to_db(raw)) == raw
    ('ǥ//C1//F6.jpg', True)
    >>> shown(raw), portable(raw)
    ('ǥ��.jpg', 'ǥ%C1%F6.jpg')
"""

from __future__ import annotations

import re

_SURROGATE = re.compile(r"[\udc80-\udcff]")
_ANY_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ESCAPED = re.compile(r"//([0-9A-F]{2})")


def to_db(text: str) -> str:
    """The stored form: every escaped byte as `//XX`."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda m: f"//{ord(m.group()) - 0xDC00:02X}", text)


def from_db(text: str) -> str:
    """The name as `os` wants it back (undecodable bytes as surrogates again)."""
    if "//" not in text:
        return text
    return _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), text)


def shown(text: str) -> str:
    """For people (logs, status, the report, a detail column): each undecodable byte as U+FFFD."""
    return _ANY_SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def portable(text: str) -> str:
    """A valid UTF-8 path for a file we place ourselves (archive, quarantine, dataset): each undecodable byte
    as %XX, so two such names stay two names; the exact original stays in the database."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)
