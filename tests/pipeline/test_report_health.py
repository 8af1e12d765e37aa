"""The report's Label health and Class overlap sheets, from a real (scripted-trainer) audit, read back with pandas
and openpyxl, and opened by LibreOffice."""

from __future__ import annotations

import shutil
from datetime import timezone

import openpyxl
import pandas as pd
import pytest

from pipeline.report.workbook import write_report
from pipeline.settings import ThumbnailOptions
from pipeline.training.queue import request_training
from tests.pipeline.audit_fakes import ColourTrainer, make_snapshot
from tests.pipeline.test_audit import _images, _supervisor
from tests.pipeline.test_report import _soffice
from tests.pipeline.training_fakes import options_for


@pytest.fixture
def audited(engine, cfg):
    """Two audits of the same 30 images (two labels flipped): the health history has two rows."""
    data = make_snapshot(engine, cfg.home, _images())
    for t in (0.0, 1.0):
        request_training(engine, "manual", kind="audit", folds=3)
        _supervisor(engine, cfg.home, data, ColourTrainer()).tick(t)
    return cfg.home


def _write(engine, home):
    thumbs = ThumbnailOptions(newest=2000, max_bytes=50 << 20, max_pixels=89_478_485, max_aspect=20.0)
    return write_report(engine, home / "reports" / "r.xlsx", home=home, labels=options_for(), tz=timezone.utc,
                        thumbnails=thumbs)


def test_label_health_lists_the_flagged_images_with_thumbnails_and_the_score_over_time(engine, audited):
    path = _write(engine, audited)
    sheet = pd.read_excel(path, sheet_name="Label health")
    flagged = sheet[["original_name", "given_class", "suggested_class"]].dropna().values.tolist()
    assert sorted(flagged) == [["cover003.png", "fairy_tale", "comic"], ["cover016.png", "painting", "fairy_tale"]]
    assert (sheet["label_quality"].dropna() < 0.2).all()
    assert sheet["review_copy"].dropna().str.startswith("review/audit-000").all()
    assert sheet["run"].dropna().tolist() == [1, 2] and sheet["flagged"].dropna().tolist() == [2, 2]
    assert sheet["label_health"].dropna().between(0.8, 1).all()
    assert set(sheet["class (worst labels first)"].dropna()) == {"comic", "fairy_tale", "painting"}
    ws = openpyxl.load_workbook(path)["Label health"]
    assert len(ws._images) == 2 and all(max(i.width, i.height) <= 48 for i in ws._images)
    summary = [str(v) for v in pd.read_excel(path, sheet_name="Summary")["value"]]
    assert any(v.startswith("The last label audit flags 2 images") for v in summary)


def test_class_overlap_ranks_the_pairs_beside_a_coloured_matrix(engine, audited):
    path = _write(engine, audited)
    sheet = pd.read_excel(path, sheet_name="Class overlap")
    pairs = sheet[["class_a", "class_b", "recommendation"]].dropna().values.tolist()
    assert pairs and all(r.split(":")[0] in ("merge them", "define them more sharply", "allow both")
                         for _a, _b, r in pairs)
    matrix = sheet[["given \\ suggested", "comic", "fairy_tale", "painting"]].dropna().values.tolist()
    # given (rows) x suggested: the comic labelled fairy_tale, the fairy_tale labelled painting
    assert matrix == [["comic", 9, 0, 0], ["fairy_tale", 1, 9, 0], ["painting", 0, 1, 10]]
    ws = openpyxl.load_workbook(path)["Class overlap"]
    rules = [r for cf in ws.conditional_formatting for r in cf.rules]
    assert [r.type for r in rules] == ["colorScale"]
    ranges = str(next(iter(ws.conditional_formatting)).sqref).split()
    assert len(ranges) == 6  # the off-diagonal cells of a 3 x 3 matrix


def test_the_new_sheets_are_empty_tables_before_any_audit(engine, cfg):
    path = _write(engine, cfg.home)
    book = pd.read_excel(path, sheet_name=None)
    assert book["Label health"].empty and book["Class overlap"].empty


def test_libreoffice_opens_the_label_health_sheets(engine, audited, tmp_path):
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        pytest.skip("LibreOffice (soffice) not found: `make test` installs libreoffice-calc where apt works")
    path = _write(engine, audited)
    profile = tmp_path / "lo-profile"
    pdf = _soffice(soffice, profile, path, "pdf", tmp_path / "pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    _soffice(soffice, profile, path, "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,-1",
             tmp_path / "csv", f"{path.stem}-Summary.csv")
    health = (tmp_path / "csv" / "r-Label health.csv").read_text(encoding="utf-8")
    assert "cover003.png,fairy_tale,comic" in health
    overlap = (tmp_path / "csv" / "r-Class overlap.csv").read_text(encoding="utf-8").splitlines()
    assert overlap[0].startswith("rank,class_a,class_b,confused")


def test_the_summary_warns_when_the_last_audits_models_learned_nothing():
    from pipeline.report.health import AuditFindings, health_warnings

    weak = AuditFindings(health=0.4, history=[{"accuracy": 0.3, "majority": 0.4}])
    assert health_warnings(weak)[0].startswith("The last label audit's fold models were right on 30% of the images")
    assert health_warnings(AuditFindings(health=0.9, history=[{"accuracy": 0.8, "majority": 0.4}])) == []
