"""session_scope(write=True): a read-then-write transaction is not refused because another process committed
between its read and its write (SQLite, WAL: 'database is locked' at once, whatever the busy timeout)."""

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from storage.db import make_engine, session_scope


@pytest.fixture
def two_engines(tmp_path):
    """Two engines on one SQLite file: two processes, as the daemon and its training job are."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first, second = make_engine(url), make_engine(url)
    with first.begin() as c:
        c.execute(text("CREATE TABLE counter (n INTEGER)"))
        c.execute(text("INSERT INTO counter VALUES (0)"))
    yield first, second
    first.dispose()
    second.dispose()


def bump_after_a_commit_elsewhere(first, second, **options) -> None:
    """Read the counter in `first`, let `second` try to commit meanwhile, then write what was read plus one."""
    other = threading.Thread(target=lambda: _bump(second))
    try:
        with session_scope(first, **options) as s:
            n = s.execute(text("SELECT n FROM counter")).scalar_one()
            other.start()
            other.join(0.5)  # a deferred read lets it commit now; a write transaction makes it wait for ours
            s.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
    finally:
        other.join(10)
    assert not other.is_alive()


def _bump(engine) -> None:
    with session_scope(engine) as s:
        s.execute(text("UPDATE counter SET n = n + 1"))


def test_a_plain_transaction_that_read_is_refused_its_write_after_another_commit(two_engines):
    """Why `write` exists (SQLite's SQLITE_BUSY_SNAPSHOT): what the training job's progress rows met."""
    first, second = two_engines
    with pytest.raises(OperationalError, match="database is locked"):
        bump_after_a_commit_elsewhere(first, second)


def test_a_write_transaction_takes_the_lock_first_and_both_updates_count(two_engines):
    first, second = two_engines
    bump_after_a_commit_elsewhere(first, second, write=True)
    with session_scope(first) as s:
        assert s.execute(text("SELECT n FROM counter")).scalar_one() == 2
