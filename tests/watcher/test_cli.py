"""The CLI through its real entry point (`python -m watcher`, and the installed `coverwatch` script)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


def one_line_error(result, *needles):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0]
    return lines[0]


def test_init_creates_the_layout(tmp_path):
    r = run_cli("init", str(tmp_path / "h"))
    assert r.returncode == 0, r.stderr
    home = tmp_path / "h"
    for folder in ("inbox", "labeled", "archive", "quarantine", "review", "dataset", "models", "reports"):
        assert (home / folder).is_dir()
    text = (home / "coverwatch.yaml").read_text()
    assert "# coverwatch configuration" in text and "settle_seconds: 1.0" in text


def test_init_refuses_to_overwrite(tmp_path):
    assert run_cli("init", str(tmp_path)).returncode == 0
    (tmp_path / "coverwatch.yaml").write_text("task: classify\n")
    one_line_error(run_cli("init", str(tmp_path)), "already exists")
    assert (tmp_path / "coverwatch.yaml").read_text() == "task: classify\n"


def test_missing_config_is_one_line_and_exit_2(tmp_path):
    one_line_error(run_cli("-c", "missing.yaml", "status", cwd=tmp_path), "missing.yaml", "not found")


def test_config_option_after_the_command_too(tmp_path):
    one_line_error(run_cli("status", "-c", str(tmp_path / "nope.yaml")), "nope.yaml")


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    run_cli("init", str(tmp_path))
    (tmp_path / "coverwatch.yaml").write_text("watch: {settle_seconds: -3}\n")
    one_line_error(run_cli("-c", str(tmp_path / "coverwatch.yaml"), "status"), "watch.settle_seconds")


def test_config_from_environment_then_current_folder(tmp_path):
    run_cli("init", str(tmp_path / "a"))
    r = run_cli("status", "--json", env={"COVERWATCH_CONFIG": str(tmp_path / "a" / "coverwatch.yaml")})
    assert r.returncode == 0, r.stderr
    r = run_cli("status", "--json", cwd=tmp_path / "a", env={"COVERWATCH_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    one_line_error(run_cli("status", cwd=tmp_path, env={"COVERWATCH_CONFIG": ""}), "coverwatch.yaml")


def test_status_on_an_empty_home(tmp_path):
    run_cli("init", str(tmp_path))
    r = run_cli("-c", str(tmp_path / "coverwatch.yaml"), "status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert {k: s[k] for k in ("pending", "processed", "quarantined", "awaiting_model", "champion", "training")} == {
        "pending": 0, "processed": 0, "quarantined": 0, "awaiting_model": 0, "champion": None, "training": None}
    assert s["daemon"]["running"] is False
    plain = run_cli("-c", str(tmp_path / "coverwatch.yaml"), "status")
    assert plain.returncode == 3  # no daemon alive: monitors read the exit code
    assert "daemon: not running" in plain.stdout


def test_status_counts_the_files_that_look_like_an_earlier_one(tmp_path):
    from storage.db import make_engine, session_scope, upgrade_database
    from storage.tables import File
    from watcher.config import load_config

    run_cli("init", str(tmp_path))
    engine = make_engine(load_config(tmp_path / "coverwatch.yaml").database_url)
    try:
        upgrade_database(engine)
        with session_scope(engine) as s:
            first = File(folder="inbox", source_path="a.jpg", original_name="a.jpg", size=1, state="processed")
            s.add(first)
            s.flush()
            s.add(File(folder="inbox", source_path="a2.jpg", original_name="a2.jpg", size=1, state="processed",
                       looks_like=first.id, looks_like_bits=2))
    finally:
        engine.dispose()
    s = json.loads(run_cli("-c", str(tmp_path / "coverwatch.yaml"), "status", "--json").stdout)
    assert (s["processed"], s["duplicates"], s["near_duplicates"]) == (2, 0, 1)
    plain = run_cli("-c", str(tmp_path / "coverwatch.yaml"), "status").stdout
    assert "(0 duplicates, 1 looking like an earlier file)" in plain


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "coverwatch"
    if not script.exists():
        pytest.skip("not running from the project's venv")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "init" in r.stdout and "doctor" in r.stdout


def test_doctor_reports_versions_and_passes_here(tmp_path):
    run_cli("init", str(tmp_path))
    r = run_cli("-c", str(tmp_path / "coverwatch.yaml"), "doctor")
    for name in ("python", "torch", "torchvision", "ultralytics", "onnxruntime", "torchvision.ops.nms", "cuda", "home"):
        assert f" {name}: " in r.stdout
    assert r.returncode == 0, r.stdout


def test_doctor_explains_a_torch_torchvision_mismatch(tmp_path, monkeypatch):
    import torchvision
    from click.testing import CliRunner

    from watcher.cli import cli

    def broken_nms(*_a, **_k):
        raise NotImplementedError("Could not run 'torchvision::nms' with arguments from the 'CPU' backend")

    monkeypatch.setattr(torchvision.ops, "nms", broken_nms)
    run_cli("init", str(tmp_path))
    result = CliRunner().invoke(cli, ["-c", str(tmp_path / "coverwatch.yaml"), "doctor"])
    assert result.exit_code == 1
    assert "FAIL torchvision.ops.nms: torch" in result.output and "do not match" in result.output
    assert "pip install --force-reinstall torch==" in result.output


def test_doctor_fails_on_an_unwritable_home(tmp_path):
    from watcher.doctor import check_home

    if os.geteuid() == 0:
        (tmp_path / "x").mkdir()
        checks = check_home(tmp_path / "x" / "missing")  # root can write anywhere; a missing folder still fails
    else:
        tmp_path.chmod(0o500)
        checks = check_home(tmp_path)
    assert not checks[0].ok and "not writable" in checks[0].detail


def test_run_starts_watching_and_status_answers(tmp_path, procs):
    run_cli("init", str(tmp_path))
    cfg = str(tmp_path / "coverwatch.yaml")
    proc = procs.popen([sys.executable, "-m", "watcher", "--log-format", "json", "-c", cfg, "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "watching" in line and str(tmp_path / "inbox") in line
        deadline = time.monotonic() + 30
        while True:
            s = json.loads(run_cli("-c", cfg, "status", "--json").stdout)
            if s["daemon"]["running"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert s["daemon"]["running"] and s["daemon"]["workers"][0]["pid"] == proc.pid
        assert run_cli("-c", cfg, "status").returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        err = _stopped_or_stacks(proc, 20)
    assert proc.returncode == 0, err
    records = [json.loads(x) for x in err.splitlines() if x.strip()]
    assert any(r["message"].startswith("watching") for r in records)
    assert json.loads(run_cli("-c", cfg, "status", "--json").stdout)["daemon"]["running"] is False


def _stopped_or_stacks(proc, timeout: float) -> str:
    """The daemon's stderr once it exits; if it does not within `timeout`, fail with its threads' stacks
    (the daemon dumps them on SIGUSR1), so a hang says where it hung."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the daemon did not stop within {timeout}s of SIGTERM; its stacks:\n{err}") from None
