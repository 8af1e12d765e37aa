"""A database that is unreachable, damaged, read-only, locked, full or deleted: one line, the right exit code,
no password, and a status that tells the truth."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import ROOT, USE_POSTGRES, copy_images, run_cli
from tests.watcher.conftest import configure, rows, wait_for

sqlite_only = pytest.mark.skipif(USE_POSTGRES, reason="about the SQLite file itself")

COMMANDS = [("status",), ("run",), ("report",), ("process",)]


def cli(home, *args, timeout=120):
    return run_cli("-c", str(home / "coverwatch.yaml"), *args, timeout=timeout)


def one_line_error(r):
    """The command failed with one line on stderr and no traceback (besides `process`'s progress bar)."""
    err = [x for x in r.stderr.strip().splitlines() if not x.startswith("processing")]
    assert "Traceback" not in r.stderr and len(err) == 1, r.stderr[-3000:]
    return err[0]


# -- item 9: a URL's password is never printed ---------------------------------------------------------------

@pytest.mark.parametrize("url", ["mysql://alice:S3cr3tPW@127.0.0.1:1/cw",
                                 "postgresql://alice:S3cr3tPW@127.0.0.1:1/cw"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_database_password_is_never_printed(home, url, command):
    configure(home, database=url)
    r = cli(home, *command, timeout=60)
    line = one_line_error(r)
    # No driver: only the user can fix that (2). A server that refuses may be starting: systemd restarts (1).
    assert r.returncode == (2 if "MySQLdb" in line else 1), line
    assert "S3cr3tPW" not in r.stdout + r.stderr
    assert "alice" in line and "127.0.0.1" in line  # still says which database


def test_the_log_never_shows_a_password(caplog):
    import logging

    from storage.db import redact
    from watcher.logs import setup_logging

    setup_logging("INFO")
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "cannot reach %s", ("postgresql://bob:hunter2@db/cw",),
                               None)
    assert "hunter2" not in handler.format(record) and "bob:***@db" in handler.format(record)
    assert redact("mysql+pymysql://u:p%40ss@h:3306/x and more") == "mysql+pymysql://u:***@h:3306/x and more"


# -- item 10: a damaged or read-only database file -----------------------------------------------------------

def make_database(home):
    r = cli(home, "status")
    assert r.returncode == 3, r.stderr
    db = home / "coverwatch.db"
    assert db.stat().st_size > 0
    return db


@sqlite_only
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_corrupt_database_is_one_line_and_exit_2(home, command):
    db = make_database(home)
    with open(db, "r+b") as f:
        f.write(b"GARBAGE" * 8)  # the header: SQLite no longer recognises the file
    r = cli(home, *command, timeout=60)
    line = one_line_error(r)
    assert r.returncode == 2
    assert str(db) in line and "PRAGMA integrity_check" in line and "backup" in line and "move it aside" in line


@pytest.fixture
def immutable():
    """chattr +i a file for the test (root ignores chmod), and always take it off again."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root (chmod 0444 does not stop root, and as non-root it needs CAP_LINUX_IMMUTABLE)")
    done = []

    def make(path):
        r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {r.stderr.strip()}")
        done.append(path)

    yield make
    for path in done:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@sqlite_only
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_read_only_database_is_one_line_and_exit_2(home, immutable, command):
    db = make_database(home)
    copy_images(home / "inbox", 1)
    immutable(db)
    r = cli(home, *command, timeout=60)
    line = one_line_error(r)
    assert r.returncode == 2
    assert str(db) in line and "read-only" in line


def test_the_unit_does_not_restart_on_exit_2():
    text = (ROOT / "configs" / "coverwatch.service").read_text()
    assert "RestartPreventExitStatus=2" in text.splitlines()


# -- item 12: status that tells the truth ----------------------------------------------------------------------


@contextmanager
def write_lock_held(db: Path, *, seconds: float, until_released: bool = True):
    """Another process's write transaction (BEGIN IMMEDIATE) on `db`, in a thread, for `seconds` at most; with
    `until_released` the block's end releases it early. Yields the release event (set once it is released)."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(seconds)
        conn.execute("ROLLBACK")
        conn.close()
        release.set()

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(10), "could not take the write lock"
        yield release
    finally:
        if until_released:
            release.set()
        t.join()


@sqlite_only
def test_status_answers_while_another_process_holds_the_write_lock(home):
    make_database(home)
    with write_lock_held(home / "coverwatch.db", seconds=40) as release:
        r = cli(home, "status", "--json", timeout=60)
        held_throughout = not release.is_set()
    assert r.returncode == 0, r.stderr
    assert held_throughout  # it answered while the lock was held
    assert '"daemon"' in r.stdout


@sqlite_only
def test_report_waits_for_a_write_lock_longer_than_the_daemons_timeout(home):
    from storage.db import BUSY_TIMEOUT_MS

    make_database(home)
    # Longer than the daemon's busy timeout, counted from when `report` is up; released on time, not by the test.
    with write_lock_held(home / "coverwatch.db", seconds=BUSY_TIMEOUT_MS / 1000 + 8, until_released=False):
        r = cli(home, "report", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(".xlsx")


def test_status_counts_processed_files_whose_move_is_pending(home, engine):
    from storage.db import session_scope
    from storage.tables import File

    copy_images(home / "inbox", 3)
    now = datetime.now(timezone.utc)
    with session_scope(engine) as s:
        for i, p in enumerate(sorted((home / "inbox").iterdir())):
            moved = i == 0
            s.add(File(folder="inbox", source_path=p.name, original_name=p.name, size=1, state="processed",
                       location=f"archive/{p.name}" if moved else f"inbox/{p.name}", final_path=f"archive/{p.name}",
                       moved_at=now if moved else None, processed_at=now))
    r = cli(home, "status", "--json")
    import json

    summary = json.loads(r.stdout)
    assert summary["processed"] == 1 and summary["move_pending"] == 2
    text = cli(home, "status").stdout
    assert "1 processed" in text and "2 processed, move pending" in text


def test_status_tells_a_live_daemon_that_cannot_write_from_a_dead_one(home, engine):
    from storage.db import session_scope
    from storage.tables import Worker

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.2)
        long_ago = datetime.now(timezone.utc) - timedelta(minutes=5)
        with session_scope(engine) as s:
            # A daemon whose heartbeats stopped reaching the database (its disk is full), and one that is gone.
            s.add(Worker(host=socket.gethostname(), pid=sleeper.pid, started_at=datetime.now(timezone.utc),
                         heartbeat_at=long_ago))
        r = cli(home, "status")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"alive (pid {sleeper.pid}" in r.stdout and "cannot write the database" in r.stdout
        assert "not running" not in r.stdout
    finally:
        sleeper.kill()
        sleeper.wait()
    r = cli(home, "status")
    assert r.returncode == 3 and "daemon: not running" in r.stdout


# -- item 6: the database deleted under a running daemon ------------------------------------------------------

def start_daemon(home, tmp_path):
    err = open(tmp_path / "daemon.stderr", "ab")  # noqa: SIM115 - closed in stop_daemon
    proc = subprocess.Popen([sys.executable, "-m", "tests.watcher.daemon_proc", str(home), str(tmp_path / "calls")],
                            cwd=ROOT, env={**os.environ, "LOG_LEVEL": "INFO"}, stdout=subprocess.DEVNULL, stderr=err)
    proc.stderr_file = err
    return proc


def moved(home):
    """How many files reached their final place; 0 while the daemon has not made its tables yet."""
    from sqlalchemy.exc import OperationalError

    try:
        return len([r for r in rows(home) if r.moved_at])
    except OperationalError:
        return 0


def stop_daemon(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stderr_file.close()


@sqlite_only
def test_a_deleted_database_stops_the_daemon_for_a_restart(home, tmp_path):
    from tests.watcher.test_crash import write_jpegs

    configure(home, watch={"settle_seconds": 0.2})
    proc = start_daemon(home, tmp_path)
    try:
        write_jpegs(home / "inbox", 0, 3)
        wait_for(lambda: moved(home) == 3, timeout=90, interval=0.3)
        for p in home.glob("coverwatch.db*"):
            p.unlink()
        write_jpegs(home / "inbox", 3, 4)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon kept running on a deleted database")
    finally:
        stop_daemon(proc)
    assert proc.returncode not in (0, 2)  # systemd restarts it (Restart=on-failure, RestartPreventExitStatus=2)
    log = (tmp_path / "daemon.stderr").read_text()
    assert "deleted or replaced" in log and str(home / "coverwatch.db") in log
    assert len(list((home / "inbox").glob("*.jpg"))) == 4  # it took no file after the database went
    # The restart: a new database, the folders rescanned, the waiting files processed.
    proc = start_daemon(home, tmp_path)
    try:
        wait_for(lambda: moved(home) == 4, timeout=90, interval=0.3)
    finally:
        stop_daemon(proc)
    assert not list((home / "inbox").glob("*.jpg"))
    # `status` says what happened, after the restart too, until the note is removed.
    r = run_cli("-c", str(home / "coverwatch.yaml"), "status", "--json")
    lost = json.loads(r.stdout)["database_lost"]
    assert lost["path"] == str(home / "coverwatch.db") and lost["time"]
    r = run_cli("-c", str(home / "coverwatch.yaml"), "status")
    assert f"was deleted or replaced at {lost['time']}" in r.stdout
    assert str(home / "coverwatch.db.lost") in r.stdout  # how to clear the warning
    (home / "coverwatch.db.lost").unlink()
    r = run_cli("-c", str(home / "coverwatch.yaml"), "status", "--json")
    assert json.loads(r.stdout)["database_lost"] is None
