"""Only the CLI configures logging; library modules just call logging.getLogger(__name__)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

# What must never reach a log line raw: line breaks and other control characters (a file name may hold a
# newline, or an ANSI escape that rewrites the terminal) and lone surrogates (bytes of a name that are not UTF-8).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if "\ud800" <= c <= "\udfff":
        return "\ufffd"
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def safe_text(text: str) -> str:
    """One line, nothing a terminal acts on: control characters escaped (\\n, \\x1b), undecodable bytes as U+FFFD.

    >>> safe_text("cover\\n\\x1b[31m.jpg")
    'cover\\\\n\\\\x1b[31m.jpg'
    """
    return _UNSAFE.sub(_escape, text) if not text.isprintable() else text


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`, the message made safe (the traceback, if any, follows on its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe_text(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": safe_text(record.getMessage()),
        }
        for key, value in getattr(record, "fields", {}).items():
            doc[key] = safe_text(value) if isinstance(value, str) else value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class RedactingHandler(logging.StreamHandler):
    """Whatever a library logs (an exception that quotes a URL), no database password reaches the log."""

    def format(self, record: logging.LogRecord) -> str:
        from storage.db import redact

        return redact(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = RedactingHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald adds its own timestamp; keep the line short and greppable.
        handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("watchdog", "PIL", "matplotlib", "alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
