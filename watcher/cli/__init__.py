"""The `coverwatch` command, one module per topic: service (init, run, process, requeue, doctor, fetch), status,
data (classes, dataset, report), models (train, models), review, audit; `base` holds what they share. Each is thin."""

from __future__ import annotations

import os
import sys

from watcher.cli import audit, data, models, review, service, status  # noqa: F401  (each registers its commands on `cli`)
from watcher.cli.base import cli

__all__ = ["cli", "main"]


def _redacted_traceback(kind, value, tb) -> None:
    """A bug's traceback still reaches stderr, without any database password in it."""
    import traceback

    from storage.db import redact

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def main() -> None:
    # Ultralytics prints banners to stdout on every model load and export; our own log lines say what matters.
    os.environ.setdefault("YOLO_VERBOSE", "False")
    sys.excepthook = _redacted_traceback
    cli(prog_name="coverwatch")


if __name__ == "__main__":
    sys.exit(main())
