"""Processes the tests start: each one ended at its test's teardown, and none left running when the run ends.

A `subprocess.Popen` that is never waited outlives a failed test (a daemon still running minutes later) and
warns from `Popen.__del__`. `Processes` (the `procs` fixture) ends every process a test registers: terminate,
then kill, then wait. `pytest_sessionfinish` below is the guard: it runs after every fixture is torn down and
fails the run if a child of pytest, or a process that names the run's temp folder, is still there.
"""

from __future__ import annotations

import os
import subprocess

import psutil
import pytest


def end_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate, then kill, then wait (a waited Popen is reaped and never warns), and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


class Processes:
    """The processes one test started; `end_all` at its teardown, whether the test passed or failed."""

    def __init__(self, timeout: float = 10.0):
        self.started: list[subprocess.Popen] = []
        self.timeout = timeout

    def track(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.started.append(proc)
        return proc

    def popen(self, *args, **kw) -> subprocess.Popen:
        return self.track(subprocess.Popen(*args, **kw))

    def end_all(self) -> None:
        while self.started:
            end_process(self.started.pop(), self.timeout)


def leftover_processes(marker: str | None = None) -> list[psutil.Process]:
    """Children of this process (at any depth), and processes of any parent whose command line or working folder
    contains `marker` (a daemon whose parent was killed is adopted by init, but still names its test's folder)."""
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    found = {p.pid: p for p in me.children(recursive=True)}
    if marker:
        folder = marker.rstrip(os.sep) + os.sep  # pytest-1/ is not a prefix of pytest-12/
        for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
            if p.pid in mine or p.pid in found:
                continue
            cmdline, cwd = " ".join(p.info["cmdline"] or ()), (p.info["cwd"] or "") + os.sep
            if folder in cmdline + os.sep or cwd.startswith(folder):
                found[p.pid] = p
    return [p for p in sorted(found.values(), key=lambda p: p.pid) if _running(p)]


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"pid {p.pid}: {' '.join(p.cmdline()) or p.name()}")
        except psutil.Error:
            out.append(f"pid {p.pid}: (gone)")
    return out


def reap(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """End what the guard found, so a failed run does not leave it behind either."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


@pytest.fixture
def procs():
    """Register every process a test starts (`procs.popen(...)` or `procs.track(proc)`): ended at teardown."""
    registry = Processes()
    yield registry
    registry.end_all()


def _basetemp(config) -> str | None:
    factory = getattr(config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)  # only once a test asked for tmp_path: never created here
    return str(base) if base else None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """The guard. trylast: after pytest's own sessionfinish has torn down every fixture, the session-scoped
    PostgreSQL server included (pg_ctl detaches it from pytest and its data folder is outside the run's temp
    folder, so it is never counted: it is stopped by its fixture, not here)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    left = leftover_processes(_basetemp(session.config))
    if not left:
        return
    lines = describe(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_sep("=", f"{len(left)} process(es) left running by the tests (now ended)", red=True)
        for line in lines:
            reporter.write_line(line)
    reap(left)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
