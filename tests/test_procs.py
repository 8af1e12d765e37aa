"""The leftover-process guard (tests/procs.py) sees a leaked child, an orphan that names the run's folder, and
fails a pytest run that leaves one behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from tests.conftest import ROOT
from tests.procs import Processes, leftover_processes, reap


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_left_running_is_found_and_reaped():
    leaked = subprocess.Popen(["sleep", "60"])
    try:
        assert leaked.pid in [p.pid for p in leftover_processes()]
        reap([p for p in leftover_processes() if p.pid == leaked.pid])
        assert leaked.wait(5) is not None
        assert leaked.pid not in [p.pid for p in leftover_processes()]
    finally:
        leaked.kill()
        leaked.wait()


def test_an_orphan_that_names_the_runs_folder_is_found(tmp_path):
    """A daemon whose parent was killed -9 is adopted by init: no longer a child, but it names its test's folder."""
    code = "import time; time.sleep(60)"
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" {tmp_path}/home >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout)  # its parent, sh, has exited
    try:
        assert pid not in [p.pid for p in leftover_processes()]  # not a child any more...
        found = leftover_processes(str(tmp_path))
        assert pid in [p.pid for p in found]  # ...but found by the folder it names
        assert pid not in [p.pid for p in leftover_processes(str(tmp_path) + "0")]  # pytest-1 is not pytest-12
        reap([p for p in found if p.pid == pid])
        assert _gone(pid)
    finally:
        if not _gone(pid):
            psutil.Process(pid).kill()


def test_the_processes_fixture_ends_what_a_failed_test_started():
    registry = Processes(timeout=1)
    ignores_term = registry.popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                   "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                  stdout=subprocess.PIPE, text=True)
    assert ignores_term.stdout.readline() == "ready\n"
    started = time.monotonic()
    registry.end_all()  # terminate is ignored: killed, waited, its pipe closed
    assert ignores_term.returncode == -9 and ignores_term.stdout.closed
    assert time.monotonic() - started < 5 and registry.started == []


LEAKY_TEST = """
import subprocess
from pathlib import Path

def test_leaks_a_child(tmp_path):
    proc = subprocess.Popen(["sleep", "60"])
    Path({pidfile!r}).write_text(str(proc.pid))
    test_leaks_a_child.proc = proc  # kept alive: no Popen.__del__ here, only the process
"""


def test_a_run_that_leaves_a_child_running_fails(tmp_path):
    pidfile = tmp_path / "pid"
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST.format(pidfile=str(pidfile)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.procs",
                        "test_leaky.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    pid = int(pidfile.read_text())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 passed" in r.stdout and "1 process(es) left running by the tests (now ended)" in r.stdout
    assert f"pid {pid}: sleep 60" in r.stdout
    assert _gone(pid)
