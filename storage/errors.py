"""The root of every coverwatch error.

    CoverwatchError            anything the user can fix: one line, exit 2 (carries a reason code)
    ├── DatabaseError          the database cannot be opened, migrated or written
    └── (pipeline.errors, watcher.errors subclass this root)

    DatabaseUnavailable        not a CoverwatchError: the database cannot be used now (a server down, a lock);
    │                          it may pass by itself: exit 1, so systemd restarts
    └── DatabaseLost           the SQLite file was deleted or replaced under a running process; a restart
                               opens a new one
"""


class CoverwatchError(Exception):
    """A problem the user can fix. `code` is stable and ends up in the database and the report."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class DatabaseError(CoverwatchError):
    """Raised when the database URL is unusable or a migration fails."""

    code = "database_error"


class DatabaseUnavailable(Exception):
    """The database cannot be used right now, for a reason that may pass (a server still starting)."""


class DatabaseLost(DatabaseUnavailable):
    """The open SQLite file is no longer the one at its path (deleted, moved, replaced): stop and restart."""
