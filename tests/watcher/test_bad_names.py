"""Hostile and unlucky file names (issue 14, items 3 and 13): names that are not UTF-8, control characters, paths
too long for the OS. None of them may take a batch, a restart or a log line down."""

import json
import logging
import os
import shutil
import time

import pytest
import yaml
from openpyxl import load_workbook
from sqlalchemy import select

import watcher.jobs.upkeep as upkeep
from pipeline.labels.dataset import _current
from pipeline.report.workbook import write_report
from storage.db import session_scope
from storage.tables import ClassName, Sample
from tests.conftest import coco_images, run_cli
from tests.labelimg import labelled_images, write_classes, yolo_text
from tests.pipeline.training_fakes import options_for
from tests.watcher.conftest import configure, final_rows, home_engine, rows, running

# 표지 ("cover") as Korean Windows writes it (cp949), copied over SMB: not UTF-8. Python sees "ǥ" + 2 surrogates.
CP949 = b"\xc7\xa5\xc1\xf6"
RAW = os.fsdecode(CP949)
SHOWN = "ǥ\ufffd\ufffd"


def _utf8(path) -> bool:
    try:
        os.fsencode(str(path)).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_cp949_name_in_the_inbox_is_processed_and_archived_under_a_valid_name(home, files_in, tmp_path):
    inbox = home / "inbox"
    with running(home):
        shutil.copy(coco_images(1)[0], inbox / f"{RAW}.jpg")
        (inbox / RAW).mkdir()
        shutil.copy(coco_images(2)[1], inbox / RAW / "ok.jpg")  # a folder with such a name, too
        (inbox / f"{RAW}.heic").write_bytes(b"not accepted")
        shutil.copy(coco_images(3)[2], inbox / "plain.jpg")
        rs = final_rows(home, 4)
    got = {r.source_path: (r.state, r.reason) for r in rs}
    assert got == {f"{RAW}.jpg": ("processed", None), f"{RAW}/ok.jpg": ("processed", None),
                   f"{RAW}.heic": ("quarantined", "unsupported_format"), "plain.jpg": ("processed", None)}
    by_path = {r.source_path: r for r in rs}
    assert by_path[f"{RAW}.jpg"].original_name == f"{RAW}.jpg"  # the exact bytes come back from the database
    assert files_in("inbox") == []
    placed = [p for p in (home / "archive").rglob("*")] + [p for p in (home / "quarantine").rglob("*")]
    assert placed and all(_utf8(p) for p in placed)
    archived = home / by_path[f"{RAW}.jpg"].final_path
    assert archived.read_bytes() == coco_images(1)[0].read_bytes()
    assert files_in("archive", "inbox") == sorted(["plain.jpg", "ǥ%C1%F6.jpg", "ǥ%C1%F6/ok.jpg"])

    # The report cannot hold a surrogate (the XML would be invalid): it shows replacement characters.
    engine = home_engine(home)
    try:
        out = write_report(engine, tmp_path / "r.xlsx", home=home, low_confidence=0.4, labels=options_for())
    finally:
        engine.dispose()
    book = load_workbook(out, read_only=True, data_only=True)  # names are links: what they show
    cells = {str(c) for ws in book.worksheets for row in ws.iter_rows(values_only=True) for c in row if c}
    assert f"{SHOWN}.jpg" in cells and f"{SHOWN}.heic" in cells


def test_process_with_a_cp949_name_finishes_the_whole_batch(home):
    """`coverwatch process` (the issue's reproduction): exit 0, the valid files of the batch done too, and the
    JSON log lines stay valid JSON showing the name with replacement characters."""
    inbox = home / "inbox"
    shutil.copy(coco_images(1)[0], inbox / f"{RAW}.jpg")
    (inbox / f"{RAW}.heic").write_bytes(b"not accepted")
    shutil.copy(coco_images(2)[1], inbox / "plain.jpg")
    cfg = str(home / "coverwatch.yaml")
    for _ in range(2):  # and a second start with the same folder: no crash loop
        r = run_cli("--log-format", "json", "-c", cfg, "process")
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        docs = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
        assert all(_utf8(line) for line in r.stderr.splitlines())
    said = " ".join(d["message"] for d in docs)
    assert f"{SHOWN}.heic" not in said  # the second run has nothing more to say about it
    states = {r.source_path: r.state for r in rows(home)}
    # No model is configured in a fresh home: images wait for one; the bad type is quarantined at once.
    assert states == {f"{RAW}.jpg": "awaiting_model", f"{RAW}.heic": "quarantined", "plain.jpg": "awaiting_model"}


def test_first_process_logs_the_name_with_replacement_characters(home):
    (home / "inbox" / f"{RAW}.heic").write_bytes(b"not accepted")
    for fmt in ("json", "text"):
        r = run_cli("--log-format", fmt, "-c", str(home / "coverwatch.yaml"), "process")
        assert r.returncode == 0, r.stderr
        if fmt == "json":
            messages = [json.loads(line)["message"] for line in r.stderr.splitlines() if line.startswith("{")]
            assert any(f"quarantined {SHOWN}.heic: unsupported_format" in m for m in messages), r.stderr
            (home / "inbox" / f"{RAW}-2.heic").write_bytes(b"another")
        else:
            assert f"quarantined {SHOWN}-2.heic: unsupported_format" in r.stderr, r.stderr


@pytest.fixture
def quick_rebuilds(monkeypatch):
    monkeypatch.setattr(upkeep, "DATASET_REBUILD_SECONDS", 0.2)


def test_cp949_names_in_a_labelled_drop_and_a_class_folder(home, files_in, quick_rebuilds):
    configure(home, watch={"pair_timeout_seconds": 1})
    lab = home / "labeled"
    img = labelled_images(0, 2)
    with running(home):
        write_classes(lab / "drop", ["cat"])
        shutil.copy(img[0], lab / "drop" / f"{RAW}.jpg")
        (lab / "drop" / f"{RAW}.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)]))
        (lab / RAW).mkdir()  # a class folder whose name is not UTF-8
        shutil.copy(img[1], lab / RAW / "cover.jpg")
        rs = final_rows(home, 4)
        engine = home_engine(home)
        try:
            from tests.watcher.conftest import wait_for

            snap = wait_for(lambda: (s := _current(home / "dataset")) and len(list(s.glob("images/*/*"))) == 2
                            and s, 30, 0.1)
            with session_scope(engine) as s:
                classes = list(s.scalars(select(ClassName.name).order_by(ClassName.id)))
                samples = list(s.scalars(select(Sample)))
        finally:
            engine.dispose()
    got = {r.source_path: (r.state, r.reason) for r in rs}
    assert got == {"drop/classes.txt": ("processed", None), f"drop/{RAW}.jpg": ("processed", None),
                   f"drop/{RAW}.txt": ("processed", None), f"{RAW}/cover.jpg": ("processed", None)}
    assert len(samples) == 2
    assert classes == ["cat", SHOWN]  # a class name is text for people: replacement characters
    assert all(_utf8(p) for p in (home / "archive").rglob("*"))
    assert all(_utf8(p) for p in snap.rglob("*"))
    names = yaml.safe_load((snap / "data.yaml").read_text(encoding="utf-8"))["names"]
    assert sorted(names.values() if isinstance(names, dict) else names) == sorted(["cat", SHOWN])
    assert files_in("labeled") == ["drop/classes.txt"] or files_in("labeled") == []


# -- item 13: control characters in names reach no log line raw ---------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_escape_newlines_ansi_and_bad_bytes(fmt, capsys):
    from watcher.logs import setup_logging

    setup_logging("INFO", fmt)
    try:
        logging.getLogger("pipeline.intake.ingest").warning("quarantined %s: %s", f"a\nb\r\x1b[2J\x9b{RAW}\u2028.jpg",
                                                     "zero_bytes")
    finally:
        logging.getLogger().handlers[:] = []
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "\x1b" not in err and "\x9b" not in err and "\r" not in err and "\u2028" not in err
    message = json.loads(lines[0])["message"] if fmt == "json" else lines[0].split(": ", 1)[1]
    assert message == f"quarantined a\\nb\\r\\x1b[2J\\x9b{SHOWN}\\u2028.jpg: zero_bytes"


def test_process_logs_a_newline_name_on_one_line(home):
    (home / "inbox" / "evil\nWARNING forged line\x1b[31m.heic").write_bytes(b"x")
    r = run_cli("-c", str(home / "coverwatch.yaml"), "process")
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if "quarantined" in ln]
    assert "evil\\nWARNING forged line\\x1b[31m.heic" in line
    assert not any(ln.startswith("WARNING forged") for ln in r.stderr.splitlines())
    assert "\x1b" not in r.stderr


def test_fetch_removes_stale_temp_files_of_killed_fetches(home):
    """`fetch` killed with -9 leaves its hidden .part file; the next fetch removes ours once stale, and only ours."""
    inbox = home / "inbox"
    old, fresh, foreign = inbox / ".cover.jpg.0123abcd.part", inbox / ".big.jpg.89abcdef.part", inbox / ".notes.part"
    for p in (old, fresh, foreign):
        p.write_bytes(b"half a download")
    two_hours_ago = time.time() - 7200
    for p in (old, foreign):
        os.utime(p, (two_hours_ago, two_hours_ago))
    r = run_cli("-c", str(home / "coverwatch.yaml"), "fetch", "http://127.0.0.1:1/x.jpg")  # refused: nothing new
    assert r.returncode == 2, r.stderr
    assert sorted(p.name for p in inbox.iterdir()) == sorted([fresh.name, foreign.name])
    assert "removed 1 partial download" in r.stderr


def _deep_file(base, levels: int, name: str) -> str:
    """A file below `levels` folders of 200 bytes each, made with dir fds (the whole path reaches no syscall)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    parts = []
    try:
        for i in range(levels):
            d = f"{i:02d}" + "d" * 198
            os.mkdir(d, dir_fd=fd)
            new = os.open(d, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
            parts.append(d)
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, coco_images(1)[0].read_bytes())
        os.close(out)
    finally:
        os.close(fd)
    return os.path.join(str(base), *parts, name)


def test_paths_too_long_for_the_system_are_logged_once_each(home, caplog):
    from watcher.config import load_config
    from watcher.daemon import Daemon
    from tests.watcher.conftest import CountingStep

    inbox = home / "inbox"
    deep_dir = _deep_file(inbox, 21, "lost.jpg")  # the folder itself is past 4,096 bytes
    # A file whose own path is past the limit, in a folder that is not.
    levels = (4096 - len(os.fsencode(str(inbox)))) // 201
    (inbox / "x").mkdir()
    deep_name = _deep_file(inbox / "x", levels, "n" * 250 + ".jpg")
    assert len(os.fsencode(deep_dir)) > 4096 and len(os.fsencode(deep_name)) >= 4096
    shutil.copy(coco_images(2)[1], inbox / "fine.jpg")
    caplog.set_level(logging.WARNING, logger="watcher.jobs.scan")
    d = Daemon(load_config(home / "coverwatch.yaml"), step=CountingStep())
    assert d.process_pending() == 1
    d2 = Daemon(load_config(home / "coverwatch.yaml"), step=CountingStep())
    caplog.clear()
    d2.initialize(observe=False)  # its first rescan
    try:
        d2.rescan.run(1e9)
        d2.rescan.run(2e9)
    finally:
        d2.shutdown()
    said = [r.getMessage() for r in caplog.records if "longer than the system allows" in r.getMessage()]
    assert len(said) == 2, said  # one line per path, not one per rescan
    assert {r.source_path: r.state for r in rows(home)} == {"fine.jpg": "processed"}


def test_process_counts_each_file_once_when_a_batch_is_retried(home):
    """`process` said "processed 1024 files" for 700: a batch that is retried was counted again."""
    from pipeline.inference.steps import Result, Step
    from watcher.config import load_config
    from watcher.daemon import Daemon

    class FailsOnce(Step):
        calls = 0

        def __call__(self, items):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("the model's first call failed")
            return [Result() for _ in items]

    for i, p in enumerate(coco_images(5)):
        shutil.copy(p, home / "inbox" / f"{i}.jpg")
    step = FailsOnce()
    assert Daemon(load_config(home / "coverwatch.yaml"), step=step).process_pending() == 5
    assert step.calls == 2
    assert sorted(r.state for r in rows(home)) == ["processed"] * 5


def test_sighup_with_a_changed_task_says_it_needs_a_restart(home, caplog):
    from tests.watcher.conftest import wait_for

    caplog.set_level(logging.INFO, logger="watcher.daemon")
    with running(home) as d:
        assert (d.cfg.task, d.cfg.watch.settle_seconds) == ("detect", 0.2)
        configure(home, task="classify", watch={"settle_seconds": 0.3}, model={"imgsz": 320, "conf": 0.5})
        d.request_reload()  # what the SIGHUP handler does
        wait_for(lambda: d.cfg.watch.settle_seconds == 0.3)
        assert d.cfg.task == "detect" and d.cfg.model.imgsz == 640  # what the running model was made for
        assert d.cfg.model.conf == 0.5  # thresholds do change live
    said = [r for r in caplog.records if "reloaded" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    # model.weights follows the task when unset (yolo11n-cls.pt for classify), so it changed too
    assert ("task, model.weights, model.imgsz, training.base, training.imgsz: a change there needs a restart "
            "(still using task=detect, model.weights=yolo11n.pt, model.imgsz=640, training.base=yolo11n.yaml, "
            "training.imgsz=640)") in \
        said[0].getMessage()
