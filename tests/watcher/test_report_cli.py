"""`coverwatch report`, and the daemon's periodic report."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import delete, select

from storage.db import session_scope, upgrade_database
from storage.tables import File, Label, Prediction, Report, Sample
from tests.conftest import run_cli
from tests.watcher.conftest import CountingNoop, configure, home_engine
from watcher.config import load_config
from watcher.daemon import Daemon


def _seed(home: Path) -> None:
    engine = home_engine(home)
    upgrade_database(engine)
    with session_scope(engine) as s:
        f = File(folder="inbox", source_path="동화.jpg", original_name="동화.jpg", size=10, state="processed",
                 final_path="archive/inbox/동화.jpg")
        s.add(f)
        s.flush()
        s.add(Prediction(file_id=f.id, model_version="v1", predicted_class="동화", confidence=0.77))
    engine.dispose()


def _seed_labels(home: Path) -> None:
    """One labelled cover with a 만화 box and a 동화 box inside it (IoU 0.75), and five more 만화 covers."""
    engine = home_engine(home)
    upgrade_database(engine)
    with session_scope(engine) as s:
        for i, boxes in enumerate([[("만화", 0.5), ("동화", 0.375)]] + [[("만화", 0.5)]] * 5):
            f = File(folder="labeled", source_path=f"c{i}.jpg", original_name=f"c{i}.jpg", size=10, sha256=f"{i:064x}",
                     state="processed", final_path=f"archive/labeled/c{i}.jpg")
            s.add(f)
            s.flush()
            s.add(Sample(image_file_id=f.id, image_sha256=f.sha256, source_format="yolo", width=64, height=48,
                         boxes=len(boxes)))
            s.add_all(Label(file_id=f.id, image_sha256=f.sha256, class_name=c, cx=0.5, cy=0.5, w=0.5, h=h,
                            source_format="yolo") for c, h in boxes)
    engine.dispose()


def _flags(path: Path) -> tuple[int, list[str]]:
    """Ambiguous boxes and the classes warned about as imbalanced, in a workbook."""
    issues = pd.read_excel(path, sheet_name="Label issues", usecols="A:D").dropna(how="all")
    classes = pd.read_excel(path, sheet_name="Classes").set_index("class")
    return (int((issues["kind"] == "ambiguous_box").sum()),
            sorted(classes.index[classes["warning"].astype(str).str.contains("fewer")]))


def test_the_report_judges_labels_with_the_configs_training_thresholds(home, tmp_path):
    """`coverwatch report` and the daemon's report pass training.ambiguity_iou and imbalance_warn_ratio on."""
    _seed_labels(home)  # 만화 6 images, 동화 1: ratio 6
    out = tmp_path / "r.xlsx"
    for training, expected in (({"ambiguity_iou": 0.7, "imbalance_warn_ratio": 5.0}, (1, ["동화"])),
                               ({"ambiguity_iou": 0.8, "imbalance_warn_ratio": 6.0}, (0, []))):
        configure(home, training=training)
        proc = run_cli("-c", str(home / "coverwatch.yaml"), "report", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert _flags(out) == expected
    configure(home, training={"ambiguity_iou": 0.6, "imbalance_warn_ratio": 2.0})
    _daemon_report(home)
    assert _flags(home / "reports" / "latest.xlsx") == (1, ["동화"])


def _daemon_report(home: Path) -> None:
    """One daemon loop pass writes its scheduled report (the reports written before are forgotten first, else
    the daemon's would not be due for an hour)."""
    engine = home_engine(home)
    with session_scope(engine) as s:
        s.execute(delete(Report))
    engine.dispose()
    d = _daemon(home)
    try:
        d.loop_once()
    finally:
        d.shutdown()


def _reports(home: Path) -> list[tuple[str, int]]:
    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            return [(r.path, r.rows) for r in s.scalars(select(Report).order_by(Report.id))]
    finally:
        engine.dispose()


def test_report_writes_a_dated_workbook_and_latest(home):
    _seed(home)
    proc = run_cli("-c", str(home / "coverwatch.yaml"), "report")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.parent == (home / "reports").resolve() and path.name.startswith("coverwatch-")
    review = path.name.replace("coverwatch-", "review-")  # the review workbook comes with every report
    assert sorted(p.name for p in (home / "reports").iterdir()) == sorted(
        [path.name, "latest.xlsx", review, "review-latest.xlsx"])
    preds = pd.read_excel(home / "reports" / "latest.xlsx", sheet_name="Predictions")
    assert preds[["original_name", "predicted_class", "confidence"]].values.tolist() == [["동화.jpg", "동화", 0.77]]
    assert _reports(home) == [(f"reports/{path.name}", 1)]


def test_report_output_option_writes_only_that_file(home, tmp_path):
    _seed(home)
    out = tmp_path / "elsewhere" / "mine.xlsx"
    proc = run_cli("report", "-o", str(out), env={"COVERWATCH_CONFIG": str(home / "coverwatch.yaml")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert list((home / "reports").iterdir()) == []
    links = pd.read_excel(out, sheet_name="Predictions")["archive_path"].tolist()
    assert links == ["archive/inbox/동화.jpg"]


def test_old_reports_are_pruned_to_reports_keep(home):
    configure(home, reports={"every_minutes": 60, "keep": 2})
    for stamp in ("20200101-0000", "20200101-0100", "20200101-0200"):
        (home / "reports" / f"coverwatch-{stamp}.xlsx").write_bytes(b"old")
    (home / "reports" / "notes.txt").write_text("not ours")
    proc = run_cli("-c", str(home / "coverwatch.yaml"), "report")
    assert proc.returncode == 0, proc.stderr
    new = Path(proc.stdout.strip()).name
    assert sorted(p.name for p in (home / "reports").iterdir()) == sorted(
        ["coverwatch-20200101-0200.xlsx", new, "latest.xlsx", "notes.txt", new.replace("coverwatch-", "review-"),
         "review-latest.xlsx"])


def test_an_unwritable_output_is_one_line_and_exit_2(home, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli("-c", str(home / "coverwatch.yaml"), "report", "-o", str(tmp_path / "file" / "r.xlsx"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("coverwatch: error: report: cannot write") and "Traceback" not in proc.stderr


def _daemon(home: Path) -> Daemon:
    d = Daemon(load_config(home / "coverwatch.yaml"), step=CountingNoop())
    d.initialize(observe=False)
    return d


def test_the_daemon_writes_a_report_when_one_is_due_and_not_before(home):
    _seed(home)
    d = _daemon(home)
    try:
        d.loop_once()
        first = sorted(p.name for p in (home / "reports").iterdir())
        assert "latest.xlsx" in first and "review-latest.xlsx" in first and len(first) == 4  # report, review
        d.loop_once()  # not due again for an hour
        assert len(_reports(home)) == 1
    finally:
        d.shutdown()
    d = _daemon(home)  # a restart continues the schedule instead of writing at once
    try:
        d.loop_once()
        assert len(_reports(home)) == 1
        assert d.report.next_report is not None and d.report.next_report > datetime.now(timezone.utc) + timedelta(minutes=50)
    finally:
        d.shutdown()


def test_a_failing_report_is_logged_and_the_loop_goes_on(home, monkeypatch, caplog):
    import pipeline.report.workbook

    def broken(*_a, **_k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline.report.workbook, "publish_report", broken)
    d = _daemon(home)
    try:
        with caplog.at_level(logging.ERROR, logger="watcher.jobs.upkeep"):
            assert d.loop_once() == 0
            d.loop_once()
        failures = [r for r in caplog.records if "report could not be written" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info[1].args == ("disk on fire",)
    finally:
        d.shutdown()


def test_process_writes_one_report_at_the_end_of_its_pass(home, monkeypatch):
    """`coverwatch process` in cron: its report covers the whole pass, not only the first batch of it."""
    import watcher.drops
    from PIL import Image

    monkeypatch.setattr(watcher.drops, "INGEST_BATCH", 4)
    configure(home, watch={"settle_seconds": 0})
    for i in range(10):
        Image.new("RGB", (40, 30), (i * 20, 7, 9)).save(home / "inbox" / f"{i}.png")
    d = Daemon(load_config(home / "coverwatch.yaml"), step=CountingNoop())
    assert d.process_pending() == 10
    assert [rows for _, rows in _reports(home)] == [10]


def test_reports_thumbnails_is_passed_on_by_the_command_and_the_daemon(home, tmp_path):
    """The default (2,000) puts a thumbnail beside the archived photo; `reports.thumbnails: 0` none."""
    import hashlib

    import openpyxl
    from PIL import Image

    _seed(home)
    photo = home / "archive" / "inbox" / "동화.jpg"
    photo.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (300, 400), (30, 120, 200)).save(photo)
    engine = home_engine(home)
    with session_scope(engine) as s:
        s.scalars(select(File)).one().sha256 = hashlib.sha256(photo.read_bytes()).hexdigest()
    engine.dispose()

    def pictures(path: Path) -> int:
        return len(openpyxl.load_workbook(path)["Predictions"]._images)

    out = tmp_path / "r.xlsx"
    assert run_cli("-c", str(home / "coverwatch.yaml"), "report", "-o", str(out)).returncode == 0
    assert pictures(out) == 1 and list((home / ".thumbs").glob("*/*.jpg"))
    configure(home, reports={"thumbnails": 0})
    assert run_cli("-c", str(home / "coverwatch.yaml"), "report", "-o", str(out)).returncode == 0
    assert pictures(out) == 0
    configure(home, reports={"thumbnails": 5})
    _daemon_report(home)
    assert pictures(home / "reports" / "latest.xlsx") == 1
