"""The Summary as a dashboard (figures, classes with the champion's quality, three charts from SQL counts), and a
print layout on every sheet."""

from __future__ import annotations

import re
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest

from pipeline.report.dashboard import _per_period
from pipeline.report.workbook import write_report
from storage.db import session_scope
from storage.tables import ClassName, File, ModelMetric, ModelVersion, Prediction
from tests.pipeline.training_fakes import options_for

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def history(engine, home: Path) -> Path:
    """Ten images over three days (none on the second), a champion with per-class figures, one quarantined."""
    with session_scope(engine) as s:
        s.add_all(ClassName(name=n, position=i) for i, n in enumerate(["만화", "동화"]))
        champ = ModelVersion(version="v2", task="classify", path="models/v2/weights/best.pt", state="champion",
                             created_at=T0, promoted_at=T0, metrics={"top1": 0.8})
        s.add(champ)
        s.flush()
        s.add_all(ModelMetric(model_version_id=champ.id, class_name=c, images=n, precision=p, recall=r)
                  for c, n, p, r in (("만화", 12, 0.9, 0.75), ("동화", 4, 0.5, 0.25)))
        for i, conf in enumerate([0.05, 0.12, 0.35, 0.41, 0.55, 0.72, 0.8, 0.91, 0.97, 1.0]):
            at = T0 + timedelta(days=0 if i < 6 else 2, hours=i)
            f = File(folder="inbox", source_path=f"{i}.jpg", original_name=f"{i}.jpg", size=1, state="processed",
                     final_path=f"archive/inbox/{i}.jpg", created_at=at, processed_at=at)
            s.add(f)
            s.flush()
            s.add(Prediction(file_id=f.id, model_version="v2", predicted_class="만화" if i % 3 else "동화",
                             confidence=conf, created_at=at))
        s.add(File(folder="inbox", source_path="bad.jpg", original_name="bad.jpg", size=1, state="quarantined",
                   reason="truncated_image", final_path="quarantine/inbox/bad.jpg", processed_at=T0))
    return home


def _write(engine, home: Path, **kw) -> Path:
    kw.setdefault("tz", timezone.utc)
    return write_report(engine, home / "reports" / "r.xlsx", home=home, labels=options_for(),
                        now=T0 + timedelta(days=3), **kw)


def _block(ws, header: str) -> list[list]:
    """The rows under the header cell `header` (and the columns right of it up to a blank header)."""
    cell = next(c for row in ws.iter_rows() for c in row if c.value == header)
    cols = []
    while ws.cell(cell.row, cell.column + len(cols)).value is not None:
        cols.append(cell.column + len(cols))
    out, r = [], cell.row + 1
    while ws.cell(r, cell.column).value is not None:
        out.append([ws.cell(r, c).value for c in cols])
        r += 1
    return out


def test_the_summary_has_three_charts_of_the_counts(engine, history):
    path = _write(engine, history)
    with zipfile.ZipFile(path) as z:
        rels = z.read("xl/worksheets/_rels/sheet1.xml.rels").decode()  # the Summary is the first sheet
        drawing = re.search(r'Target="\.\./drawings/(drawing\d+\.xml)"', rels)[1]
        charts = re.findall(r"charts/(chart\d+\.xml)", z.read(f"xl/drawings/_rels/{drawing}.rels").decode())
        xml = [z.read(f"xl/charts/{c}").decode() for c in charts]
    titles = [re.search(r"<a:t>([^<]+)</a:t>", x)[1] for x in xml]
    assert titles == ["Images per class: labelled and predicted",
                      "Confidence of the latest predictions (red: below 40%)", "Files decided per day"]
    assert ['<c:barDir val="bar"/>' in xml[0], '<c:barDir val="col"/>' in xml[1], "stacked" in xml[2]] == [True] * 3
    ws = openpyxl.load_workbook(path)["Summary"]
    assert _block(ws, "confidence") == [[f"{10 * i}-{10 * i + 10}%", n]
                                        for i, n in enumerate([1, 1, 0, 1, 1, 1, 0, 1, 1, 3])]
    days = _block(ws, "day")
    assert [(d.date().isoformat(), *rest) for d, *rest in days] == [
        ("2026-11-20", 6, 0, 1), ("2026-11-21", 0, 0, 0), ("2026-11-22", 4, 0, 0)]


def test_the_summary_lists_the_classes_with_the_champions_figures_and_keeps_its_items(engine, history):
    path = _write(engine, history)
    ws = openpyxl.load_workbook(path)["Summary"]
    assert [c.value for c in ws[1]][:2] == ["item", "value"]
    assert _block(ws, "class") == [["만화", 0, 6, 2, 12, 0.9, 0.75], ["동화", 0, 4, 1, 4, 0.5, 0.25]]
    assert [c.value for c in ws[1]][3:10] == ["class", "labelled", "predicted", "low confidence",
                                             "validation images", "precision", "recall"]
    items = {ws.cell(r, 1).value: ws.cell(r, 2).value for r in range(2, 40) if ws.cell(r, 1).value}
    assert items["files processed"] == 10 and items["files quarantined"] == 1 and items["champion model"] == "v2"
    warning = next(r for r in range(2, 40) if ws.cell(r, 1).value == "warning")
    assert ws.cell(warning, 1).font.b and ws.cell(warning, 2).alignment.wrap_text
    assert ws.row_dimensions[warning].height >= 15


def test_days_are_local_days_and_a_long_period_is_counted_per_week():
    utc = timezone.utc
    hours = [(datetime(2026, 11, 20, 20, tzinfo=utc), "processed", "inbox", 3),  # 05:00 the 21st in Seoul
             (datetime(2026, 11, 21, 1, tzinfo=utc), "processed", "labeled", 2),
             (datetime(2026, 11, 21, 2, tzinfo=utc), "quarantined", "inbox", 1)]
    step, days = _per_period(hours, ZoneInfo("Asia/Seoul"))
    assert step == "day" and [(d.isoformat(), c) for d, c in days] == [
        ("2026-11-21", {"classified": 3, "labelled": 2, "quarantined": 1})]
    step, days = _per_period(hours, utc)
    assert [(d.isoformat(), c) for d, c in days] == [("2026-11-20", {"classified": 3}),
                                                   ("2026-11-21", {"labelled": 2, "quarantined": 1})]
    later = hours + [(datetime(2027, 3, 1, 12, tzinfo=utc), "processed", "inbox", 5)]  # 101 days on
    step, weeks = _per_period(later, utc)
    assert step == "week" and weeks[0] == (datetime(2026, 11, 16).date(), {"classified": 3, "labelled": 2,
                                                                             "quarantined": 1})
    assert len(weeks) == 16 and weeks[-1] == (datetime(2027, 3, 1).date(), {"classified": 5})
    assert all(d.weekday() == 0 for d, _ in weeks)


def test_an_empty_database_gives_a_summary_without_charts(engine, home):
    ws = openpyxl.load_workbook(_write(engine, home))["Summary"]
    assert ws._charts == []
    assert _block(ws, "day") == []


def test_every_sheet_prints_landscape_one_page_wide_with_its_header_row_on_every_page(engine, history):
    wb = openpyxl.load_workbook(_write(engine, history))
    assert wb.sheetnames[0] == "Summary" and len(wb.sheetnames) >= 7
    for ws in wb.worksheets:
        setup = ws.page_setup
        # fitToWidth="1" is the default, which XlsxWriter leaves out and openpyxl reads back as None
        assert (setup.orientation, setup.paperSize, setup.fitToWidth or 1, setup.fitToHeight) == (
            "landscape", 9, 1, 0), ws.title
        assert ws.sheet_properties.pageSetUpPr.fitToPage, ws.title
        assert ws.print_title_rows == "$1:$1", ws.title
        assert (ws.oddFooter.left.text, ws.oddFooter.right.text) == ("&A", "&P of &N"), ws.title
    summary = wb["Summary"]
    breaks = [b.id for b in summary.row_breaks.brk]
    anchors = sorted(c.anchor._from.row for c in summary._charts)
    assert breaks[0] < anchors[0] and anchors[-1] < breaks[1]  # the charts on a page of their own
