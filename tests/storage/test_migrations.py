"""Alembic owns the schema: head matches the models, and upgrades keep existing rows."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

import subprocess
import sys

import pytest

from storage.db import HEAD_REVISION, _alembic_config, current_revision, make_engine, upgrade_database
from storage.tables import Base
from tests.conftest import USE_POSTGRES

HEAD = "0009"


def test_empty_database_upgrades_to_head_matching_the_models(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        assert current_revision(engine) == HEAD
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_the_fast_path_names_alembics_own_head():
    """storage.db.HEAD_REVISION is what lets a start skip Alembic: a new migration must move it too."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)  # the migrations' own configuration, as upgrade_database makes it
    assert HEAD_REVISION == ScriptDirectory.from_config(cfg).get_current_head() == HEAD


@pytest.mark.skipif(USE_POSTGRES, reason="one process on a SQLite file is enough to see the imports")
def test_a_start_at_head_does_not_import_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    upgrade_database(engine)
    engine.dispose()
    code = ("import sys; from storage.db import make_engine, upgrade_database, current_revision; "
            f"e = make_engine({url!r}); upgrade_database(e); print(current_revision(e), 'alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [HEAD, "False"]


def test_upgrade_is_idempotent(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        upgrade_database(engine)
        assert current_revision(engine) == HEAD
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
        assert current_revision(engine) == HEAD
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


def test_0006_keeps_model_versions_and_goes_back_down(db_url):
    from alembic import command

    from storage.db import _alembic_config

    engine = make_engine(db_url)
    try:
        upgrade_database(engine, "0005")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO model_versions (version, task, path, state, created_at)"
                              " VALUES ('v0001', 'classify', 'models/v0001', 'champion', '2026-01-01')"))
        upgrade_database(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version, temperature, ece_before, ece_after FROM model_versions")
                                ).all() == [("v0001", None, None, None)]
            assert conn.execute(text("SELECT count(*) FROM model_confusions")).scalar() == 0
        command.downgrade(_alembic_config(engine), "0005")
        assert current_revision(engine) == "0005"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM model_versions")).all() == [("v0001",)]
    finally:
        engine.dispose()
