"""Only the CLI configures logging; library modules just call logging.getLogger(__name__)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            doc[key] = value
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
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("watchdog", "PIL", "matplotlib", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
