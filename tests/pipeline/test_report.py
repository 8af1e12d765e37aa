"""The Excel report: every sheet read back with pandas, the workbook's looks checked with openpyxl, and a real
spreadsheet program (LibreOffice) opening it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import select

from pipeline.images.thumbs import THUMB_PX
from pipeline.report.workbook import ReportError, publish_report, write_report
from pipeline.settings import ThumbnailOptions
from storage.db import session_scope
from storage.tables import (ClassName, Detection, File, Label, ModelMetric, ModelVersion, Prediction, Report, Sample,
                            TrainingAttempt, TrainingRun)
from tests.pipeline.training_fakes import options_for

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
SHEETS = ["Summary", "Predictions", "Detections", "Classes", "Label issues", "Label health", "Class overlap",
          "Training runs", "Model quality", "Quarantine", "Corrections"]
CLASSES = ["만화", "동화", "상상화"]


def _file(s, name: str, state: str = "processed", **kw) -> File:
    folder = kw.pop("folder", "inbox")
    f = File(folder=folder, source_path=name, original_name=name, size=1000, state=state,
             final_path=kw.pop("final_path", f"archive/{folder}/{name}" if state == "processed" else None),
             created_at=T0, **kw)
    s.add(f)
    s.flush()
    return f


def _predict(s, f: File, cls: str, conf: float, version: str, at: datetime, boxes=()) -> Prediction:
    p = Prediction(file_id=f.id, model_version=version, predicted_class=cls, confidence=conf, created_at=at)
    s.add(p)
    s.flush()
    s.add_all(Detection(prediction_id=p.id, class_name=c, confidence=k, x1=0.1, y1=0.2, x2=0.6, y2=0.9)
              for c, k in boxes)
    return p


def _label(s, f: File, cls: str, box=None, sha: str | None = None, replaced: bool = False) -> None:
    cx, cy, w, h = box or (None, None, None, None)
    s.add(Label(file_id=f.id, image_sha256=sha or f.sha256, class_name=cls, cx=cx, cy=cy, w=w, h=h,
                source_format="yolo" if box else "folder", created_at=T0, replaced_at=T0 if replaced else None))


def _sample(s, f: File, boxes: int = 1, replaced: bool = False) -> File:
    """A labelled drop of `f` (its labels are added with `_label`); `replaced`: a later drop replaced it."""
    s.add(Sample(image_file_id=f.id, image_sha256=f.sha256, source_format="yolo", width=64, height=48, boxes=boxes,
                 created_at=T0, replaced_at=T0 if replaced else None))
    return f


@pytest.fixture
def seeded(engine, home: Path) -> Path:
    """A realistic history: Korean classes, a pretrained coco model then a trained champion, labels that are
    imbalanced, ambiguous and conflicting, two training runs (one with an out-of-memory retry), quarantine."""
    with session_scope(engine) as s:
        s.add_all(ClassName(name=n, position=i) for i, n in enumerate(CLASSES))
        a = _file(s, "표지 1.jpg")
        _predict(s, a, "book", 0.35, "yolo11n", T0, [("book", 0.35)])  # history: replaced by the champion's
        _predict(s, a, "만화", 0.93, "v1", T0 + timedelta(hours=1), [("만화", 0.93), ("동화", 0.41)])
        b = _file(s, 'cover "2".jpg')
        _predict(s, b, "person", 0.31, "yolo11n", T0 + timedelta(minutes=5), [("person", 0.31)])
        c = _file(s, "=1+1.jpg")
        _predict(s, c, "동화", 0.88, "v1", T0 + timedelta(hours=2), [])
        _file(s, "broken.jpg", "quarantined", reason="truncated_image", detail="image file is truncated",
              final_path="quarantine/inbox/broken.jpg", processed_at=T0 + timedelta(minutes=1))
        _file(s, "waiting.jpg", "awaiting_model")
        for i in range(30):
            m = _sample(s, _file(s, f"m{i}.jpg", folder="labeled", sha256=f"{i:064x}"))
            _label(s, m, "만화", (0.5, 0.5, 0.4, 0.4))
        amb = _sample(s, _file(s, "amb.jpg", folder="labeled", sha256="a" * 64), boxes=3)
        _label(s, amb, "동화", (0.5, 0.5, 0.4, 0.4))
        _label(s, amb, "상상화", (0.5, 0.5, 0.4, 0.38))
        _label(s, amb, "만화", (0.5, 0.5, 0.4, 0.4))
        # One cover in two drops: first 만화 (replaced), then 동화.
        first = _sample(s, _file(s, "conflict.jpg", folder="labeled", sha256="c" * 64), replaced=True)
        _label(s, first, "만화", replaced=True)
        _label(s, _sample(s, _file(s, "conflict again.jpg", folder="labeled", sha256="c" * 64)), "동화")
        # What pipeline.training.job and pipeline.training.registry record: the overall figures on the run and the version,
        # per class in model_metrics, every try in training_attempts.
        v1 = ModelVersion(version="v1", task="detect", path="models/v1/weights/best.pt", state="champion",
                          classes=CLASSES, created_at=T0, promoted_at=T0 + timedelta(minutes=50),
                          metrics={"map50_95": 0.61, "map50": 0.8})
        v0 = ModelVersion(version="v0", task="detect", path="models/v0/weights/best.pt", state="retired",
                          created_at=T0, promoted_at=T0)
        s.add_all([v0, v1])
        s.flush()
        s.add_all(ModelMetric(model_version_id=v1.id, class_name=c, precision=p, recall=r, created_at=T0)
                  for c, p, r in ((None, 0.7, 0.6), ("만화", 0.9, 0.8), ("동화", 0.5, 0.4)))
        s.add(TrainingRun(state="done", trigger="new_labels", model_version_id=v0.id, epoch=50, epochs=50,
                          params={"batch": 16, "imgsz": 640}, metrics={"map50_95": 0.42},
                          requested_at=T0, started_at=T0, finished_at=T0 + timedelta(minutes=12)))
        second = TrainingRun(state="done", trigger="manual", model_version_id=v1.id, epoch=100, epochs=100,
                             params={"batch": 8, "imgsz": 640}, metrics={"map50_95": 0.61, "map50": 0.8},
                             requested_at=T0 + timedelta(minutes=20), started_at=T0 + timedelta(minutes=20),
                             finished_at=T0 + timedelta(minutes=50))
        s.add(second)
        s.flush()
        s.add_all([TrainingAttempt(run_id=second.id, n=1, model="yolo11n.yaml", imgsz=640, batch=16, outcome="oom",
                                   reason="torch.cuda.OutOfMemoryError: CUDA out of memory", started_at=T0),
                   TrainingAttempt(run_id=second.id, n=2, model="yolo11n.yaml", imgsz=640, batch=8, outcome="ok",
                                   started_at=T0)])
        s.add(TrainingRun(state="failed", trigger="schedule", epochs=100, error="NotImplementedError: nms",
                          requested_at=T0 + timedelta(hours=3)))
    plots = home / "models" / "v1"
    plots.mkdir(parents=True)
    Image.new("RGB", (800, 600), "white").save(plots / "confusion_matrix.png")
    Image.new("RGB", (1200, 600), "white").save(plots / "results.png")
    return home


def _write(engine, home: Path, name: str = "report.xlsx", **kw) -> Path:
    kw.setdefault("tz", timezone.utc)
    kw.setdefault("labels", options_for())
    return write_report(engine, home / "reports" / name, home=home, now=T0 + timedelta(hours=4), **kw)


def _values(df: pd.DataFrame) -> list[list]:
    """Rows as lists, blank cells as None."""
    return df.astype(object).where(df.notna(), None).values.tolist()


def _naive(dt: datetime) -> pd.Timestamp:
    return pd.Timestamp(dt.replace(tzinfo=None))


def test_every_sheet_reads_back_with_its_values(engine, seeded):
    path = _write(engine, seeded)
    book = pd.read_excel(path, sheet_name=None)
    assert list(book) == SHEETS

    preds = book["Predictions"]
    assert preds["looks_like"].isna().all()  # no image here looks like another
    assert preds.drop(columns=["id", "looks_like"]).to_dict("records") == [
        {"original_name": "표지 1.jpg", "predicted_class": "만화", "confidence": 0.93, "model_version": "v1",
         "time": _naive(T0 + timedelta(hours=1)), "archive_path": "archive/inbox/표지 1.jpg"},
        {"original_name": 'cover "2".jpg', "predicted_class": "person", "confidence": 0.31,
         "model_version": "yolo11n", "time": _naive(T0 + timedelta(minutes=5)),
         "archive_path": 'archive/inbox/cover "2".jpg'},
        {"original_name": "=1+1.jpg", "predicted_class": "동화", "confidence": 0.88, "model_version": "v1",
         "time": _naive(T0 + timedelta(hours=2)), "archive_path": "archive/inbox/=1+1.jpg"},
    ]

    dets = book["Detections"]
    assert dets[["original_name", "class_name", "confidence"]].values.tolist() == [
        ["표지 1.jpg", "만화", 0.93], ["표지 1.jpg", "동화", 0.41], ['cover "2".jpg', "person", 0.31]]
    assert dets[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [0.1, 0.2, 0.6, 0.9]
    assert set(dets["prediction_id"]) <= set(preds["id"])

    classes = book["Classes"].set_index("class")
    assert list(classes.index) == ["만화", "동화", "상상화", "person"]
    assert classes.loc["만화", ["labels", "labelled_images", "predictions", "detections"]].tolist() == [31, 31, 1, 1]
    assert classes.loc["동화", ["labels", "predictions", "detections"]].tolist() == [2, 1, 1]
    assert classes.loc["만화", "share_of_labels"] == pytest.approx(31 / 34)
    assert classes.loc["동화", "imbalance_ratio"] == 15.5
    assert "fewer labelled images than 만화" in classes.loc["동화", "warning"]
    assert "fewer labelled images than 만화" in classes.loc["상상화", "warning"]
    assert classes[["train_images", "train_entries_oversampled"]].isna().all().all()  # no dataset built
    assert "pretrained" in classes.loc["person", "warning"]
    assert classes.loc["person", "low_confidence"] == 1

    issues = pd.read_excel(path, sheet_name="Label issues", usecols="A:E")
    assert sorted(issues[["kind", "original_name"]].values.tolist()) == [
        ["ambiguous_box", "amb.jpg"], ["ambiguous_box", "amb.jpg"], ["ambiguous_box", "amb.jpg"],
        ["conflicting_labels", "conflict again.jpg, conflict.jpg"]]
    assert issues.set_index("kind").loc["conflicting_labels", "detail"].startswith(
        "labelled 동화, 만화 in different drops (drop 32: 만화; drop 33: 동화); left out of training")
    matrix = pd.read_excel(path, sheet_name="Label issues", usecols="G:J", index_col=0)
    assert matrix.index.name == "co-occurrence (same object)"
    assert matrix.loc["만화"].tolist() == [0, 2, 1]  # amb.jpg's boxes, and the cover's two drops
    assert matrix.loc["상상화"].tolist() == [1, 1, 0]

    runs = pd.read_excel(path, sheet_name="Training runs", usecols="A:S")
    assert _values(runs[["run", "attempt", "state", "model_version", "promoted", "batch"]]) == [
        [1, 0, "done", "v0", "yes", 16], [2, 0, "done", "v1", "yes (champion)", 8],
        [2, 1, "oom", None, None, 16], [2, 2, "ok", None, None, 8], [3, 0, "failed", None, None, None]]
    assert runs["map50_95"].tolist()[:2] == [0.42, 0.61]
    assert runs.loc[0, "minutes"] == 12
    assert runs.loc[2, "error"].startswith("torch.cuda.OutOfMemoryError")
    per_class = pd.read_excel(path, sheet_name="Training runs", usecols="U:W").dropna(how="all")
    assert per_class.values.tolist() == [["만화", 0.9, 0.8], ["동화", 0.5, 0.4]]

    quarantine = book["Quarantine"]
    assert quarantine.to_dict("records") == [
        {"original_name": "broken.jpg", "reason": "truncated_image",
         "explanation": "the image data ends early or is corrupt", "detail": "image file is truncated",
         "time": _naive(T0 + timedelta(minutes=1)), "path": "quarantine/inbox/broken.jpg"}]

    summary = book["Summary"][["item", "value"]]
    items = dict(summary[summary["item"] != "warning"].values.tolist())
    assert items["files processed"] == 36 and items["files quarantined"] == 1
    assert items["files awaiting a model"] == 1 and items["queue depth"] == 0
    assert items["champion model"] == "v1" and items["champion map50_95"] == 0.61
    assert items["images in this report"] == 3 and items["boxes in this report"] == 3
    assert items["period from"] == _naive(T0) and items["period to"] == _naive(T0 + timedelta(hours=2))
    warnings = summary[summary["item"] == "warning"]["value"].tolist()
    assert any("1 files were quarantined, most for: truncated_image (1)" in w for w in warnings)
    assert any(w.startswith("Class 상상화: 31x fewer labelled images") for w in warnings)
    assert any(w.startswith("1 images are left out of training") for w in warnings)
    assert any("ambiguous_box" in w for w in warnings) and any("conflicting_labels" in w for w in warnings)
    assert any("NotImplementedError" in w for w in warnings)


def test_the_predictions_sheet_says_which_earlier_file_an_image_looks_like(engine, home):
    with session_scope(engine) as s:
        first = _file(s, "cover.jpg")
        _predict(s, first, "만화", 0.9, "v1", T0)
        again = _file(s, "cover (1).jpg", looks_like=first.id, looks_like_bits=2)
        _predict(s, again, "만화", 0.8, "v1", T0 + timedelta(minutes=1))
    path = _write(engine, home)
    preds = pd.read_excel(path, sheet_name="Predictions")
    assert _values(preds[["original_name", "looks_like"]]) == [
        ["cover.jpg", None], ["cover (1).jpg", f"#{first.id} cover.jpg (2 bits apart)"]]
    items = dict(pd.read_excel(path, sheet_name="Summary")[["item", "value"]].values.tolist())
    assert items["near-duplicates (looks like)"] == 1


def test_the_report_flags_what_the_dataset_build_flags_with_the_configs_thresholds(cfg, engine):
    """One rule (pipeline.labels.quality), the config's thresholds, the same labels: the same ambiguous pairs and the
    same imbalanced classes in the dataset build and in the report; and the build's before/after counts."""
    from pipeline.labels.dataset import build_dataset
    from tests.labelimg import write_classes, yolo_text
    from tests.pipeline.test_dataset import KOREAN, ingest, synthetic_drop

    synthetic_drop(cfg, "syn", KOREAN, {"만화": 7, "동화": 2})
    d = cfg.path("labeled") / "amb"
    write_classes(d, KOREAN)
    for name, other, h, colour in (("p75", 1, 0.375, (1, 2, 3)), ("p65", 2, 0.325, (4, 5, 6))):
        Image.new("RGB", (64, 48), colour).save(d / f"{name}.png")  # a 만화 box and one inside it: IoU 0.75, 0.65
        (d / f"{name}.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.5, 0.5), (other, 0.5, 0.5, 0.5, h)]))
    ingest(cfg, engine, "syn")
    ingest(cfg, engine, "amb")
    rules = options_for(ambiguity_iou=0.6, imbalance_warn_ratio=2.5, balance="oversample", val_fraction=1e-9,
                        max_repeat=4)
    b = build_dataset(engine, cfg.home, cfg.path("dataset"), rules)

    def flagged(labels):
        path = write_report(engine, cfg.home / "reports" / "r.xlsx", home=cfg.home, labels=labels)
        issues = pd.read_excel(path, sheet_name="Label issues", usecols="A:D").dropna(how="all")
        classes = pd.read_excel(path, sheet_name="Classes").set_index("class")
        pairs = sorted((r.original_name, r.detail.split(" on ")[0]) for r in issues.itertuples()
                       if r.kind == "ambiguous_box")
        return pairs, sorted(classes.index[classes["warning"].astype(str).str.contains("fewer")]), classes

    pairs, imbalanced, classes = flagged(rules)
    assert pairs == sorted((o["name"], " / ".join(o["classes"])) for o in b.quality.overlaps) == [
        ("p65.png", "만화 / 상상화"), ("p75.png", "동화 / 만화")]
    assert imbalanced == sorted(b.quality.imbalanced) == ["동화", "상상화"]  # 9 : 3 : 1 images, above 2.5
    assert "'상상화' 1" in b.quality.warning
    for c in KOREAN:
        assert classes.loc[c, "train_images"] == b.balance.before[c]
        assert classes.loc[c, "train_entries_oversampled"] == b.balance.after[c]
    assert (b.balance.before["동화"], b.balance.after["동화"]) == (3, 9)
    pairs, imbalanced, _ = flagged(options_for())  # the defaults, 0.7 and 5.0: what the config says now counts
    assert pairs == [("p75.png", "동화 / 만화")] and imbalanced == ["상상화"]


def test_workbook_has_charts_pictures_frozen_headers_and_filters(engine, seeded):
    wb = openpyxl.load_workbook(_write(engine, seeded))
    for name in SHEETS:
        ws = wb[name]
        assert ws.freeze_panes == "A2", name
        assert ws["A1"].font.b, name
        if name != "Summary":
            assert ws.auto_filter.ref and ws.auto_filter.ref.startswith("A1:"), name
    preds = wb["Predictions"]
    assert preds.auto_filter.ref == "A1:H4"  # id ... archive_path, looks_like
    assert preds["D2"].number_format == "0.0%" and preds["F2"].is_date
    assert preds["A2"].number_format == "#,##0" and preds["G2"].font.u == "single"  # spooled: the column's format
    assert wb["Detections"]["E2"].number_format == "0.000" and wb["Quarantine"]["E2"].is_date
    assert preds["G2"].value == '=HYPERLINK("../archive/inbox/표지 1.jpg","archive/inbox/표지 1.jpg")'
    assert preds["G3"].value == '=HYPERLINK("../archive/inbox/cover ""2"".jpg","archive/inbox/cover ""2"".jpg")'
    # The name opens the archived (or quarantined) file too.
    assert preds["B2"].value == '=HYPERLINK("../archive/inbox/표지 1.jpg","표지 1.jpg")' and preds["B2"].font.u
    assert wb["Quarantine"]["A2"].value == '=HYPERLINK("../quarantine/inbox/broken.jpg","broken.jpg")'
    low = [str(r.sqref) for r in preds.conditional_formatting]
    assert low == ["D2:D4"]
    assert preds.column_dimensions["B"].width >= len("표지 1.jpg") + 2  # wide characters count twice
    assert [c.tagname for c in wb["Classes"]._charts] == ["barChart"]
    assert [c.tagname for c in wb["Training runs"]._charts] == ["lineChart"]
    assert len(wb["Summary"]._images) == 2


def test_dates_are_shown_in_the_given_time_zone(engine, seeded):
    path = _write(engine, seeded, tz=ZoneInfo("Asia/Seoul"))
    preds = pd.read_excel(path, sheet_name="Predictions")
    assert preds["time"].iloc[0] == _naive(T0 + timedelta(hours=10))
    summary = pd.read_excel(path, sheet_name="Summary")
    assert dict(summary[["item", "value"]].values.tolist())["times shown in"] == "KST"


def test_rows_past_the_sheet_limit_continue_on_numbered_sheets(engine, seeded):
    path = _write(engine, seeded, max_rows_per_sheet=3, chunk_rows=1)  # header + 2 rows per sheet
    book = pd.read_excel(path, sheet_name=None)
    assert list(book)[:5] == ["Summary", "Predictions", "Predictions (2)", "Detections", "Detections (2)"]
    names = pd.concat([book["Predictions"], book["Predictions (2)"]])["original_name"].tolist()
    assert names == ["표지 1.jpg", 'cover "2".jpg', "=1+1.jpg"]
    notes = book["Summary"].query("item == 'note'")["value"].tolist()
    assert notes == ["Predictions has 3 rows, more than one Excel sheet holds: continued on Predictions (2).",
                     "Detections has 3 rows, more than one Excel sheet holds: continued on Detections (2)."]


def test_an_empty_database_gives_every_sheet_with_its_columns(engine, home):
    book = pd.read_excel(_write(engine, home), sheet_name=None)
    assert list(book) == SHEETS
    assert list(book["Predictions"].columns) == ["id", "original_name", "predicted_class", "confidence",
                                                 "model_version", "time", "archive_path", "looks_like"]
    assert list(book["Quarantine"].columns) == ["original_name", "reason", "explanation", "detail", "time", "path"]
    assert list(book["Training runs"].columns)[:3] == ["run", "attempt", "state"]
    assert list(book["Model quality"].columns)[:7] == ["version", "state", "class", "val_images", "precision",
                                                       "recall", "map50"]
    assert all(book[name].empty for name in SHEETS[1:])
    items = dict(book["Summary"][["item", "value"]].values.tolist())
    assert items["champion model"] == "none yet"


def test_the_report_is_recorded_and_no_temporary_file_is_left(engine, seeded):
    path = _write(engine, seeded)
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.xlsx"]
    with session_scope(engine) as s:
        assert [(r.path, r.rows) for r in s.scalars(select(Report))] == [("reports/report.xlsx", 3)]


def test_the_report_module_loads_no_machine_learning_framework():
    code = "import sys, pipeline.report.workbook; print(sorted({'torch', 'ultralytics'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_an_unwritable_destination_is_one_clear_error(engine, seeded):
    (seeded / "blocked").write_text("a file, not a folder")
    with pytest.raises(ReportError, match="cannot write"):
        write_report(engine, seeded / "blocked" / "r.xlsx", home=seeded, labels=options_for())


def test_a_failure_half_way_leaves_no_file_behind(engine, seeded, monkeypatch):
    import pipeline.report.workbook

    def broken(*_a, **_k):
        raise RuntimeError("database went away")

    monkeypatch.setattr(pipeline.report.workbook, "detections_sheet", broken)
    with pytest.raises(RuntimeError, match="went away"):
        _write(engine, seeded)
    assert list((seeded / "reports").iterdir()) == []
    with session_scope(engine) as s:
        assert s.scalars(select(Report)).all() == []


def test_published_reports_are_dated_copied_to_latest_and_pruned(engine, seeded):
    folder = seeded / "reports"
    for minutes in (0, 60, 120):
        publish_report(engine, folder, home=seeded, keep=2, now=T0 + timedelta(minutes=minutes), tz=timezone.utc,
                       labels=options_for())
    assert sorted(p.name for p in folder.iterdir()) == [
        "coverwatch-20261120-1030.xlsx", "coverwatch-20261120-1130.xlsx", "latest.xlsx"]
    assert (folder / "latest.xlsx").read_bytes() == (folder / "coverwatch-20261120-1130.xlsx").read_bytes()


def test_libreoffice_opens_the_workbook(engine, seeded, tmp_path):
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        pytest.skip("LibreOffice (soffice) not found: `make test` installs libreoffice-calc where apt works")
    _archive_photos(engine, seeded)
    path = _write(engine, seeded, thumbnails=ThumbnailOptions(newest=2000, max_bytes=50 << 20,
                                                              max_pixels=89_478_485, max_aspect=20.0))
    profile = tmp_path / "lo-profile"  # its own profile: no clash with another LibreOffice running
    pdf = _soffice(soffice, profile, path, "pdf", tmp_path / "pdf")  # what "open and print" takes
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5000
    _check_the_printed_pages(pdf)
    # Every sheet as UTF-8 text: LibreOffice read the cells themselves, Korean and link formulas included.
    _soffice(soffice, profile, path, "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,-1",
             tmp_path / "csv", f"{path.stem}-Summary.csv")
    summary = (tmp_path / "csv" / "report-Summary.csv").read_text(encoding="utf-8")
    assert "champion model,v1" in summary and "Class 상상화: 31x fewer labelled images" in summary
    preds = (tmp_path / "csv" / "report-Predictions.csv").read_text(encoding="utf-8").splitlines()
    assert preds[1].split(",")[1:3] == ["표지 1.jpg", "만화"] and preds[1].endswith(",archive/inbox/표지 1.jpg,,")  # looks_like, thumbnail


def _archive_photos(engine, home: Path) -> None:
    """The processed files' archived copies as real photos (coco24), so that the report has thumbnails."""
    import hashlib

    from tests.conftest import coco_images

    with session_scope(engine) as s:
        files = s.scalars(select(File).where(File.folder == "inbox", File.state == "processed").order_by(File.id))
        for f, photo in zip(files, coco_images(3)):
            data = photo.read_bytes()
            (home / f.final_path).parent.mkdir(parents=True, exist_ok=True)
            (home / f.final_path).write_bytes(data)
            f.sha256 = hashlib.sha256(data).hexdigest()


def _check_the_printed_pages(pdf: Path) -> None:
    """Page by page, what LibreOffice printed: each sheet one page wide (no columns cut into strips), the Summary's
    three charts whole on one page, a footer with the sheet's name, and the thumbnails as pictures."""
    pdftotext, pdfimages = shutil.which("pdftotext"), shutil.which("pdfimages")
    if pdftotext is None or pdfimages is None:
        pytest.skip("poppler-utils (pdftotext) not found: `make test` installs it where apt works")
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = text.split("\f")[:-1]
    for first, last in (("original_name", "archive_path"), ("prediction_id", "y2"), ("requested", "device")):
        page = next(p for p in pages if first in p)
        assert last in page, f"{first} and {last} printed on different pages"
    titles = ("Images per class", "Confidence of the latest", "Files decided per day")
    assert any(all(t in p for t in titles) for p in pages), "the Summary's charts are not on one page"
    assert [p.split()[-4:] for p in pages[:1]] == [["Summary", "1", "of", str(len(pages))]]
    images = subprocess.run([pdfimages, "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    sizes = [tuple(map(int, line.split()[3:5])) for line in images.splitlines()[2:]]
    assert sum(max(size) == THUMB_PX for size in sizes) >= 3  # a thumbnail beside each of the three predictions


def _soffice(soffice: str, profile: Path, path: Path, to: str, outdir: Path, name: str | None = None) -> Path:
    proc = subprocess.run([soffice, f"-env:UserInstallation={profile.as_uri()}", "--headless", "--norestore",
                           "--convert-to", to, "--outdir", str(outdir), str(path)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(outdir)})
    out = outdir / (name or f"{path.stem}.{to.split(':')[0]}")
    assert proc.returncode == 0 and out.is_file(), proc.stdout + proc.stderr
    return out


def _written_reason_codes() -> dict[str, list[str]]:
    """Every reason code a string literal in the source hands to a quarantine: code -> where.

    Looks at Rejected(code)/Reject(m, code), _set_final(row, code), `<x>.final.append((m, code, ...))` and
    assignments to `.reason` (also inside tuple assignments)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    found: dict[str, list[str]] = {}

    def note(node, where):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.setdefault(node.value, []).append(where)

    for path in sorted(p for d in ("pipeline", "watcher", "storage") for p in (root / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                position = {"Rejected": 0, "Reject": 1, "_set_final": 1}.get(name)
                if position is not None and len(node.args) > position:
                    note(node.args[position], where)
                if (name == "append" and isinstance(node.func, ast.Attribute)
                        and getattr(node.func.value, "attr", None) == "final" and node.args
                        and isinstance(node.args[0], ast.Tuple) and len(node.args[0].elts) > 1):
                    note(node.args[0].elts[1], where)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "reason":
                        note(node.value, where)
                    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for t, v in zip(target.elts, node.value.elts):
                            if isinstance(t, ast.Attribute) and t.attr == "reason":
                                note(v, where)
    return found


def test_every_reason_code_the_code_writes_has_an_explanation():
    from pipeline.errors import REASONS

    written = _written_reason_codes()
    # The scan itself works: it finds codes written in each of its four ways.
    assert {"truncated_image", "missing_label", "label_rejected", "replaced", "vanished",
            "processing_error"} <= set(written)
    missing = {code: where for code, where in written.items() if code not in REASONS}
    assert missing == {}, "reason codes without an explanation in pipeline.errors.REASONS"
    assert all(isinstance(text, str) and text.strip() for text in REASONS.values())


def test_the_quarantine_sheet_explains_every_reason(engine, home):
    from pipeline.errors import REASONS

    with session_scope(engine) as s:
        for code in REASONS:
            _file(s, f"{code}.jpg", "quarantined", reason=code, final_path=f"quarantine/inbox/{code}.jpg")
    sheet = pd.read_excel(_write(engine, home), sheet_name="Quarantine")
    explained = dict(sheet[["reason", "explanation"]].values.tolist())
    assert explained == REASONS
    assert explained["replaced"] and explained["vanished"] and explained["processing_error"]


def test_model_quality_shows_each_version_per_class_its_calibration_and_confusion(engine, home):
    from storage.tables import ModelConfusion

    with session_scope(engine) as s:
        v1 = ModelVersion(version="v0001", task="classify", path="models/v0001", state="champion", classes=CLASSES,
                          created_at=T0, promoted_at=T0, metrics={"top1": 0.8}, temperature=1.734,
                          ece_before=0.2104, ece_after=0.0412, decision="no comparable champion; top1 0.8000")
        v2 = ModelVersion(version="v0002", task="classify", path="models/v0002", state="rejected", classes=CLASSES,
                          created_at=T0, metrics={"top1": 0.85}, temperature=1.2, ece_before=0.1, ece_after=0.05,
                          decision="rejected: 동화 recall 0.61 -> 0.42 (-0.19, more than training.max_class_drop "
                                   "0.05); overall top1 0.8500 vs champion 0.8000 (+0.0500, needs +0)")
        s.add_all([v1, v2])
        s.flush()
        s.add(TrainingRun(state="done", trigger="manual", model_version_id=v2.id, requested_at=T0))
        for mv, recalls in ((v1, (0.9, 0.61, 0.5)), (v2, (0.95, 0.42, 0.5))):
            s.add_all(ModelMetric(model_version_id=mv.id, class_name=c, images=n, precision=0.7, recall=r)
                      for c, n, r in zip(CLASSES, (40, 12, 2), recalls))
        s.add(ModelConfusion(model_version_id=v1.id, classes=CLASSES[:2], matrix=[[36, 4], [5, 7]]))
        s.add(ModelConfusion(model_version_id=v2.id, classes=CLASSES, matrix=[[38, 2, 0], [7, 5, 0], [1, 0, 1]]))
    path = _write(engine, home)
    per_class = pd.read_excel(path, sheet_name="Model quality", usecols="A:G")
    assert _values(per_class) == [
        ["v0002", "rejected", "만화", 40, 0.7, 0.95, None], ["v0002", "rejected", "동화", 12, 0.7, 0.42, None],
        ["v0002", "rejected", "상상화", 2, 0.7, 0.5, None], ["v0001", "champion", "만화", 40, 0.7, 0.9, None],
        ["v0001", "champion", "동화", 12, 0.7, 0.61, None], ["v0001", "champion", "상상화", 2, 0.7, 0.5, None]]
    calibration = pd.read_excel(path, sheet_name="Model quality", usecols="I:N").dropna(how="all")
    assert list(calibration.columns) == ["version.1", "task", "temperature", "ece_uncalibrated", "ece_calibrated",
                                         "decision"]
    assert _values(calibration.iloc[:, :5]) == [["v0002", "classify", 1.2, 0.1, 0.05],
                                                ["v0001", "classify", 1.734, 0.2104, 0.0412]]
    confusion = pd.read_excel(path, sheet_name="Model quality", usecols="P:T").dropna(how="all")
    assert list(confusion.columns) == ["version.2", "true \\ predicted", "만화", "동화", "상상화"]
    assert _values(confusion) == [["v0002", "만화", 38, 2, 0], ["v0002", "동화", 7, 5, 0],
                                  ["v0002", "상상화", 1, 0, 1], ["v0001", "만화", 36, 4, None],
                                  ["v0001", "동화", 5, 7, None]]
    summary = pd.read_excel(path, sheet_name="Summary")
    items = summary[["item", "value"]].values.tolist()
    assert ["champion confidence calibration", "expected calibration error 0.210 uncalibrated, 0.041 calibrated "
            "(temperature 1.73)"] in items
    assert ["warning", "Model v0002 was not promoted: 동화 recall 0.61 -> 0.42 (-0.19, more than "
            "training.max_class_drop 0.05); overall top1 0.8500 vs champion 0.8000 (+0.0500, needs +0). A class "
            "the model stopped recognising often means too few or mislabelled covers of it; see the Model quality "
            "sheet."] in items
