"""Alembic owns the schema: head matches the models, and upgrades keep existing rows."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

import pytest

from storage.db import current_revision, make_engine, upgrade_database
from storage.tables import Base
from tests.conftest import USE_POSTGRES


def test_empty_database_upgrades_to_head_matching_the_models(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        assert current_revision(engine) == "0007"
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        upgrade_database(engine)
        assert current_revision(engine) == "0007"
    finally:
        engine.dispose()


def test_database_from_an_older_revision_keeps_its_rows(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_database(engine, "0001")
        assert current_revision(engine) == "0001"
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO files (folder, source_path, original_name, size, mtime_ns, sha256, state, attempts,"
                " created_at, updated_at) VALUES ('inbox', 'a/b.jpg', 'b.jpg', 10, 0, 'ab', 'processed', 0,"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
            conn.execute(text("INSERT INTO classes (name, position, created_at) VALUES ('만화', 0, '2026-01-01')"))
        upgrade_database(engine)
        assert current_revision(engine) == "0007"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT source_path, state FROM files")).all() == [("a/b.jpg", "processed")]
            assert conn.execute(text("SELECT name FROM classes")).all() == [("만화",)]
            assert conn.execute(text("SELECT count(*) FROM workers")).scalar() == 0
    finally:
        engine.dispose()


@pytest.mark.skipif(USE_POSTGRES, reason="SQLite pragmas")
def test_sqlite_pragmas_are_set_on_every_connection(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cw.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        engine.dispose()
