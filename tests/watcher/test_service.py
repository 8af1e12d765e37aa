"""Behaviour as a systemd service: sd_notify over a real socket, SIGTERM, SIGHUP, and the unit file."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, run_cli
from tests.watcher.conftest import configure, rows, wait_for
from tests.watcher.test_crash import alive, write_jpegs


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that records every message."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def seen(self, prefix):
        return [t for t, m in self.messages if m.startswith(prefix)]

    def close(self):
        self._stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    lst = NotifyListener(tmp_path / "notify.sock")
    yield lst
    lst.close()


def start(procs, home, tmp_path, listener, **env):
    full = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000", "LOG_LEVEL": "INFO", **env}
    full.pop("WATCHDOG_PID", None)
    with open(tmp_path / "daemon.stderr", "ab") as err:  # the daemon has its own copy of the descriptor
        return procs.popen([sys.executable, "-m", "tests.watcher.daemon_proc", str(home), str(tmp_path / "calls")],
                           cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=err)


def _size(path):
    return path.stat().st_size if path.exists() else 0


def stop(proc, timeout=20):
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    proc.wait(timeout)
    return time.monotonic() - t0


def test_ready_watchdog_while_busy_and_stopping(home, tmp_path, listener, procs):
    configure(home, watch={"settle_seconds": 0.1})
    proc = start(procs, home, tmp_path, listener, SLOW_STEP_SECONDS="1.5")
    try:
        wait_for(lambda: listener.seen("READY=1"), timeout=60)
        assert any(m.startswith("STATUS=") for _, m in listener.messages)
        write_jpegs(home / "inbox", 0, 40)
        wait_for(lambda: _size(tmp_path / "calls") > 0, timeout=30)
        busy_from = time.monotonic()
        time.sleep(2.0)  # the step is sleeping: the loop is busy, not hung
        pings = [t for t in listener.seen("WATCHDOG=1") if t >= busy_from]
        assert len(pings) >= 1
    finally:
        took = stop(proc)
    assert proc.returncode == 0
    assert listener.seen("STOPPING=1")
    assert took < 10


def test_sigterm_during_a_batch_loses_nothing(home, tmp_path, listener, procs):
    configure(home, watch={"settle_seconds": 0.1})
    proc = start(procs, home, tmp_path, listener, SLOW_STEP_SECONDS="3")
    write_jpegs(home / "inbox", 0, 300)
    try:
        wait_for(lambda: _size(tmp_path / "calls") > 0, timeout=60)  # a batch is in flight
    finally:
        took = stop(proc)
    assert proc.returncode == 0 and took < 10
    in_inbox = {p.name for p in (home / "inbox").iterdir()}
    rs = rows(home)
    done = {r.original_name for r in rs if r.state == "processed"}
    assert not (in_inbox & done) and len(in_inbox | done) == 300  # each file in exactly one place
    # Start again: everything left is finished, nothing recorded twice.
    proc = start(procs, home, tmp_path, listener)
    try:
        wait_for(lambda: len([r for r in rows(home) if r.moved_at]) == 300, timeout=120, interval=0.3)
    finally:
        stop(proc)
    rs = rows(home)
    assert len(rs) == 300 and {r.state for r in rs} == {"processed"}


def test_sighup_reloads_and_rejects_a_bad_config(home, tmp_path, listener, procs):
    configure(home, watch={"settle_seconds": 0.1})
    proc = start(procs, home, tmp_path, listener)
    try:
        wait_for(lambda: alive(home, proc.pid), timeout=60)
        # A good config: a new inbox folder is watched without a restart.
        configure(home, paths={"inbox": "drop-here"})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (home / "drop-here").is_dir(), timeout=20)
        write_jpegs(home / "drop-here", 0, 3)
        wait_for(lambda: len([r for r in rows(home) if r.moved_at]) == 3, timeout=30)
        assert listener.seen("RELOADING=1")
        # A bad config: rejected with a log line, the running one kept.
        good = (home / "coverwatch.yaml").read_text()
        (home / "coverwatch.yaml").write_text(good + "\nwatch: {settle_seconds: -1}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"config reload rejected" in (tmp_path / "daemon.stderr").read_bytes(), timeout=20)
        write_jpegs(home / "drop-here", 3, 2)
        wait_for(lambda: len([r for r in rows(home) if r.moved_at]) == 5, timeout=30)
        assert proc.poll() is None
    finally:
        stop(proc)
    assert proc.returncode == 0
    line = [x for x in (tmp_path / "daemon.stderr").read_text().splitlines() if "reload rejected" in x]
    assert len(line) == 1 and "watch.settle_seconds" in line[0]


def test_status_exit_code_follows_the_daemon(home, tmp_path, listener, procs):
    cfg = str(home / "coverwatch.yaml")
    assert run_cli("-c", cfg, "status").returncode == 3
    proc = start(procs, home, tmp_path, listener)
    try:
        wait_for(lambda: alive(home, proc.pid), timeout=60)
        r = run_cli("-c", cfg, "status")
        assert r.returncode == 0 and f"pid {proc.pid}" in r.stdout
    finally:
        stop(proc)
    assert run_cli("-c", cfg, "status").returncode == 3


def test_unit_file_verifies():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (make test installs Debian's systemd when it can)")
    unit = ROOT / "configs" / "coverwatch.service"
    text = unit.read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=coverwatch", "NoNewPrivileges=yes",
                "ProtectSystem=strict", "ReadWritePaths=", "PrivateTmp=yes", "ProtectHome=yes",
                "coverwatch -c /srv/coverwatch/coverwatch.yaml run"):
        assert key in text
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    if r.returncode != 0 and ("Failed to" in r.stderr and "bus" in r.stderr.lower()):
        pytest.skip(f"systemd-analyze cannot run in this container: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr


def test_prometheus_metrics_on_localhost(home):
    import urllib.request

    from tests.watcher.conftest import running

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configure(home, metrics={"port": port})
    with running(home):
        write_jpegs(home / "inbox", 0, 3)
        wait_for(lambda: len([r for r in rows(home) if r.moved_at]) == 3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
    assert 'coverwatch_files{state="processed"} 3.0' in body
    assert 'coverwatch_files{state="quarantined"} 0.0' in body
    assert "coverwatch_uptime_seconds" in body and "coverwatch_queue_depth" in body


def test_the_service_processes_spare_the_cyclic_collector():
    """`run` and `process` freeze what start-up made and collect young objects less often (in a process of
    its own here: the test process keeps Python's defaults)."""
    code = ("import gc; from watcher.daemon import spare_the_collector; before = gc.get_freeze_count(); "
            "spare_the_collector(); print(gc.get_threshold()[0], gc.get_freeze_count() > before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["20000", "True"]
