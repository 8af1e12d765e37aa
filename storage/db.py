"""Engine set-up, the one transaction helper, and schema upgrades through Alembic."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, quote_plus

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DatabaseError, DatabaseLost, DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 10_000  # the daemon's: longer would starve systemd's watchdog
CLI_BUSY_TIMEOUT_MS = 60_000  # a command someone waits for may wait for a long write to end

# Passwords of every URL this process has seen, so that no message or log line shows one, whoever wrote it.
_SECRETS: set[str] = set()
_URL_PASSWORD = re.compile(r"(?<=://)([^\s:/?#@]*):[^\s]*?@(?=[^\s@]*(?:[\s/]|$))")


def redact(text: str) -> str:
    """`text` without any database password: those of URLs seen here, and any user:password@ in a URL."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1:***@", text)


def shown_url(url: str | URL) -> str:
    """The URL as messages may show it: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact(str(url))


def _remember_password(url: str) -> None:
    try:
        password = make_url(url).password
    except ArgumentError:
        return
    if password:
        _SECRETS.update({str(password), quote_plus(str(password)), quote(str(password), safe="")})


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_conn, _record) -> None:
        # pysqlite's own transaction handling begins only before writes and breaks SAVEPOINTs; SQLAlchemy's
        # documented fix: let pysqlite do nothing, and emit BEGIN ourselves (the "begin" hook below).
        dbapi_conn.isolation_level = None
        # WAL lets readers (status, report) run beside the daemon's writes; FULL survives power loss.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return on_connect


def _sqlite_begin(conn) -> None:
    # IMMEDIATE takes the write lock up front: used where a read decides a write that must not race (migrations).
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """Create an engine for any SQLAlchemy URL; SQLite gets its pragmas in one connect hook."""
    _remember_password(url)
    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError, ValueError) as exc:
        hint = "; install its driver (see README)" if isinstance(exc, ImportError) else ""
        raise DatabaseError(f"database: cannot use {shown_url(url)!r}: {redact(str(exc))}{hint}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine, "handle_error", _explain_sqlite_error(sqlite_path(engine)))
    return engine


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None for other databases and in-memory ones)."""
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).absolute()


LOST_SUFFIX = ".lost"  # beside the SQLite file: a note that it was deleted or replaced under a running daemon


def note_lost(engine: Engine, message: str) -> None:
    """Leave a note beside the database file (best effort): the new database made by the restart knows nothing
    of what the old one held, so `status` reads the note and says so until a person removes it."""
    path = sqlite_path(engine)
    if path is None:
        return
    note = {"path": str(path), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "message": message}
    try:
        path.with_name(path.name + LOST_SUFFIX).write_text(json.dumps(note), encoding="utf-8")
    except OSError:
        pass  # a full or read-only disk: the log line and the exit code still say it


def lost_note(engine: Engine) -> dict | None:
    """The note `note_lost` left, with `note` naming its file; None when there is none."""
    path = sqlite_path(engine)
    note = path.with_name(path.name + LOST_SUFFIX) if path else None
    try:
        data = json.loads(note.read_text(encoding="utf-8")) if note else None
    except (OSError, ValueError):
        return None
    return {**data, "note": str(note)} if isinstance(data, dict) else None


def _corrupt(where, why) -> DatabaseError:
    return DatabaseError(
        f"database: {where} is damaged ({why}): check it with `sqlite3 {where} 'PRAGMA integrity_check'`, then "
        f"restore it from a backup or move it aside (with its -wal and -shm files; a new, empty one is made at the "
        f"next start)", code="database_corrupt")


def _read_only(where, why) -> DatabaseError:
    return DatabaseError(
        f"database: {where} is read-only or cannot be opened ({why}): make the file and its folder writable for "
        f"this user (chmod, chown, `chattr -i`, a read-only mount), or move it aside to start a new one",
        code="database_readonly")


def _explain_sqlite_error(path: Path | None):
    """A damaged, read-only or vanished database file is one line that says how to recover, not a traceback of
    the statement that met it. Other errors (locked, disk full) pass: they are retried where they happen."""

    def handle_error(ctx) -> None:
        err = ctx.original_exception
        name = getattr(err, "sqlite_errorname", "") or ""
        where = path or "the database"
        if name == "SQLITE_READONLY_DBMOVED":
            raise DatabaseLost(f"database: {where} was deleted or replaced while open ({err})")
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            raise _corrupt(where, err)
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            raise _read_only(where, err)

    return handle_error


def check_writable(engine: Engine) -> None:
    """Raise the read-only DatabaseError when the SQLite file (or its folder, for the -wal and -shm files) cannot
    be written: `status` reads fine from such a file, yet nothing can record anything in it."""
    path = sqlite_path(engine)
    if path is None:
        return
    for p in (path, path.parent):
        if p.exists() and not os.access(p, os.W_OK):
            raise _read_only(path, f"{p} is not writable")


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """The one place that begins, commits and rolls back.

    `write`: a transaction that reads, then writes what it read (a counter, a state change), while another
    process may commit. SQLite refuses such a write at once with 'database is locked' when anyone committed
    since the read began, whatever the busy timeout; with `write` it takes the write lock at BEGIN (waiting up
    to the busy timeout for it) and cannot be refused later. Other databases ignore it.
    """
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        if write and engine.dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


# The newest migration under storage/migrations/versions (tests/storage/test_migrations.py holds it to Alembic's
# own head). A start whose schema is already there reads one row and never imports Alembic (~0.14 s of a cold
# `coverwatch process`).
HEAD_REVISION = "0009"


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest). Safe to call on every start.

    A schema already at the newest revision is found with a plain read, so read-only commands (`status`,
    `report`) never wait for the migration lock behind a daemon's write.
    """
    try:
        if revision == "head" and current_revision(engine) == HEAD_REVISION:
            return
        from alembic import command

        command.upgrade(_alembic_config(engine), revision)
    except OperationalError as exc:
        # Not the user's to fix, mostly: a server still starting, a long lock. Exit 1, so systemd tries again.
        raise DatabaseUnavailable(f"database: cannot upgrade {shown_url(engine.url)}: {redact(str(exc.orig))}") \
            from None


def current_revision(engine: Engine) -> str | None:
    """The schema's Alembic revision (its alembic_version row); None before the first migration."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
