"""The `coverwatch` command. Each command is thin: load the config, call one function, print.

Errors the user can fix (CoverwatchError) print one line and exit 2, never a traceback. A database error that
may pass by itself (locked, disk full, unreachable) is one line and exit 1, as is a database file deleted under
the daemon: systemd restarts on 1 and not on 2 (RestartPreventExitStatus=2). No line shows a URL's password.
A training run that failed (`train --wait`) prints its error in one line and exits 1.

The commands live by topic: `base` (the root group, -c, the config and database of one command, error lines),
`service`, `status`, `data`, `models`, `audit`.
"""

from __future__ import annotations

import os
import sys

from watcher.cli import audit, data, models, service, status  # noqa: F401  (each registers its commands on `cli`)
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
