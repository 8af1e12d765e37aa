"""The review workbook: who is listed, what each row shows, the drop-down on its hidden list; and a filled one
read back through the labelled-drop path, exactly once, with every row's outcome."""

from __future__ import annotations

import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from sqlalchemy import select

import pipeline.review.export as export
import pipeline.review.read as read
from pipeline.errors import REASONS
from pipeline.intake.core import Layout
from pipeline.intake.labelled import ingest_labelled
from pipeline.review.export import write_review_workbook
from pipeline.review.layout import OUTCOMES, SKIP, row_id
from pipeline.settings import ReviewOptions
from pipeline.training.queue import changed_images
from storage.db import session_scope
from storage.tables import Correction, File, Label, Sample
from tests.conftest import coco_images
from tests.review_books import (CLASSES, archive_images, fill, libreoffice, with_macros, xml_bomb, zip_bomb,
                                zip_parts)


def options(home: Path, task: str = "classify") -> ReviewOptions:
    return ReviewOptions(task=task, review_below=0.4, review_dir=home / "review", max_pixels=89_478_485)


def take(cfg, engine, path: Path, task: str = "classify"):
    """Drop `path` into labeled/ and take it, as the daemon does."""
    dest = cfg.path("labeled") / path.name
    dest.write_bytes(path.read_bytes())
    layout = Layout(cfg.home, cfg.path("archive"), cfg.path("quarantine"))
    return ingest_labelled(engine, layout, cfg.path("labeled"), [dest], max_bytes=50 << 20, max_pixels=89_478_485,
                           pair_timeout=30, review=options(cfg.home, task))


def table(engine, cls):
    with session_scope(engine) as s:
        rows = list(s.scalars(select(cls).order_by(cls.id)))
        s.expunge_all()
    return rows


def review_sheet(path: Path) -> pd.DataFrame:
    return pd.read_excel(path, sheet_name="Review", header=2, dtype=str)


def test_lists_the_images_that_need_a_person_least_sure_first(cfg, engine, tmp_path):
    sure, unsure, worst = archive_images(engine, cfg.home, coco_images(3), [0.9, 0.35, 0.2])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home))
    assert (book.rows, book.total) == (2, 2)
    df = review_sheet(book.path)
    assert list(df["id"]) == [row_id(worst.id, worst.sha256), row_id(unsure.id, unsure.sha256)]
    assert list(df["original_name"]) == [worst.original_name, unsure.original_name]
    assert list(df["predicted_class"]) == ["만화", "만화"]
    assert df["alternative 1"][0] == "동화 (10%)" and df["alternative 2"][0] == "상상화 (7%)"
    assert df["correct class"].isna().all() and list(df["why"]) == ["confidence 20% < 40%", "confidence 35% < 40%"]
    wb = openpyxl.load_workbook(book.path)
    ws, lists = wb["Review"], wb["lists"]
    assert lists.sheet_state == "hidden"
    assert [c.value for c in lists["A"]] == [*CLASSES, SKIP]
    (dv,) = ws.data_validations.dataValidation
    assert dv.type == "list" and dv.formula1 == "lists!$A$1:$A$4" and str(dv.sqref) == "H4:H5"
    assert ws.row_dimensions[4].height >= 72  # tall enough for the 96 px thumbnail
    with zipfile.ZipFile(book.path) as zf:
        assert len([n for n in zf.namelist() if n.startswith("xl/media/")]) == 2
    thumbs = sorted((cfg.home / ".thumbs").rglob("*.jpg"))
    assert [t.stem for t in thumbs] == sorted([worst.sha256, unsure.sha256])
    made = [t.stat().st_mtime_ns for t in thumbs]
    write_review_workbook(engine, tmp_path / "again.xlsx", home=cfg.home, options=options(cfg.home))
    assert [t.stat().st_mtime_ns for t in thumbs] == made  # once per image


def test_a_flag_source_lists_a_sure_image_with_its_reason(cfg, engine, tmp_path, monkeypatch):
    sure, _unsure = archive_images(engine, cfg.home, coco_images(2), [0.95, 0.3])
    monkeypatch.setattr(export, "FLAG_SOURCES", [lambda s: [(sure.id, "label health: likely mislabelled")]])
    df = review_sheet(write_review_workbook(engine, tmp_path / "r.xlsx", home=cfg.home,
                                            options=options(cfg.home)).path)
    assert dict(zip(df["original_name"], df["why"]))[sure.original_name] == "label health: likely mislabelled"


def test_more_than_max_rows_says_how_many_are_left_out(cfg, engine, tmp_path):
    archive_images(engine, cfg.home, coco_images(3), [0.1, 0.2, 0.3])
    book = write_review_workbook(engine, tmp_path / "r.xlsx", home=cfg.home, options=options(cfg.home), max_rows=2)
    assert (book.rows, book.total) == (2, 3)
    note = openpyxl.load_workbook(book.path)["Review"]["A2"].value
    assert "Showing the 2 least sure of 3 images" in note


def test_filled_rows_become_labels_once_and_bad_rows_are_recorded_with_their_outcome(cfg, engine, tmp_path):
    a, b, c, d = archive_images(engine, cfg.home, coco_images(4), [0.1, 0.2, 0.3, 0.35])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    (cfg.home / d.location).unlink()  # archived, then removed by hand
    filled = fill(book, {row_id(a.id, a.sha256): "동화", row_id(b.id, b.sha256): SKIP,
                         row_id(c.id, c.sha256): "공상과학", row_id(d.id, d.sha256): "만화"}, tmp_path / "filled.xlsx")
    report = take(cfg, engine, filled)
    assert (report.processed, report.quarantined) == (1, 0)
    fixes = table(engine, Correction)
    assert [(x.image_file_id, x.class_name, x.outcome) for x in fixes] == [
        (a.id, "동화", "labelled"), (b.id, SKIP, "skipped"), (c.id, "공상과학", "unknown_class"),
        (d.id, "만화", "image_gone")]
    (label,) = [lb for lb in table(engine, Label) if lb.replaced_at is None]
    assert (label.image_sha256, label.class_name, label.source_format, label.cx) == (a.sha256, "동화", "sheet", None)
    wb_row = next(f for f in table(engine, File) if f.original_name == "filled.xlsx")
    assert wb_row.state == "processed" and wb_row.final_path == "archive/labeled/filled.xlsx"
    assert (cfg.home / wb_row.final_path).is_file() and "1 labelled" in wb_row.detail
    with session_scope(engine) as s:
        assert changed_images(s) == 1  # counts toward training.min_new_labels
    # The same content again, under another name: nothing new, and said so.
    again = take(cfg, engine, filled.rename(tmp_path / "filled again.xlsx"))
    assert (again.processed, again.quarantined) == (1, 0)
    assert len(table(engine, Correction)) == 4 and len(table(engine, Sample)) == 1
    second = next(f for f in table(engine, File) if f.original_name == "filled again.xlsx")
    assert "already read (filled.xlsx" in second.detail and "nothing new" in second.detail
    # Later workbooks leave out what was decided; a re-correction to the same class is "unchanged".
    listed = review_sheet(write_review_workbook(engine, tmp_path / "next.xlsx", home=cfg.home,
                                                options=options(cfg.home)).path)
    assert sorted(listed["original_name"]) == sorted([c.original_name, d.original_name])
    take(cfg, engine, fill(book, {row_id(a.id, a.sha256): "동화"}, tmp_path / "once more.xlsx"))
    assert table(engine, Correction)[-1].outcome == "unchanged" and len(table(engine, Sample)) == 1


def test_a_correction_to_another_class_replaces_the_label(cfg, engine, tmp_path):
    (a,) = archive_images(engine, cfg.home, coco_images(1), [0.1])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    take(cfg, engine, fill(book, {row_id(a.id, a.sha256): "동화"}, tmp_path / "first.xlsx"))
    take(cfg, engine, fill(book, {row_id(a.id, a.sha256): "상상화"}, tmp_path / "second.xlsx"))
    live = [(lb.class_name, lb.image_sha256) for lb in table(engine, Label) if lb.replaced_at is None]
    assert live == [("상상화", a.sha256)]
    assert [x.outcome for x in table(engine, Correction)] == ["labelled", "labelled"]


def test_unknown_ids_and_conflicting_rows_are_not_guessed(cfg, engine, tmp_path):
    a, b = archive_images(engine, cfg.home, coco_images(2), [0.1, 0.2])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    wb = openpyxl.load_workbook(book)
    ws = wb["Review"]
    ws["J4"], ws["H4"] = f"{a.id}-{'0' * 12}", "동화"  # the right file id with another picture's hash
    ws["J5"], ws["H5"] = row_id(b.id, b.sha256), "동화"
    ws["J6"], ws["H6"] = row_id(b.id, b.sha256), "상상화"  # the same image twice, two answers
    wb.save(tmp_path / "edited.xlsx")
    take(cfg, engine, tmp_path / "edited.xlsx")
    assert [(x.row_id, x.image_file_id, x.outcome) for x in table(engine, Correction)] == [
        (f"{a.id}-{'0' * 12}", None, "unknown_row_id"), (row_id(b.id, b.sha256), b.id, "conflicting_rows")]
    assert table(engine, Sample) == []


def test_a_detect_home_records_the_class_and_copies_the_image_for_boxes(cfg, engine, tmp_path):
    (a,) = archive_images(engine, cfg.home, coco_images(1), [0.1])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home,
                                 options=options(cfg.home, "detect")).path
    assert "not a box label" in openpyxl.load_workbook(book)["Review"]["A2"].value
    take(cfg, engine, fill(book, {row_id(a.id, a.sha256): "동화"}, tmp_path / "filled.xlsx"), task="detect")
    (fix,) = table(engine, Correction)
    assert fix.outcome == "review_copy" and fix.detail == f"copied to review/{a.original_name}"
    assert (cfg.home / "review" / a.original_name).read_bytes() == (cfg.home / a.location).read_bytes()
    assert (cfg.home / "review" / "classes.txt").read_text(encoding="utf-8") == "".join(f"{n}\n" for n in CLASSES)
    assert table(engine, Sample) == []


def _bad(tmp_path: Path, kind: str, good: Path) -> Path:
    if kind == "xlsm":
        return Path(good.replace(tmp_path / "review.xlsm"))
    if kind == "vba":
        return with_macros(good, tmp_path / "looks plain.xlsx")
    if kind == "zip_bomb":
        return zip_bomb(tmp_path / "bomb.xlsx")
    if kind == "xml_bomb":
        return xml_bomb(tmp_path / "lol.xlsx")
    if kind == "ods":
        return Path(good.replace(tmp_path / "review.ods"))
    if kind == "garbage":
        (tmp_path / "garbage.xlsx").write_bytes(b"PK\x03\x04 not a zip at all")
        return tmp_path / "garbage.xlsx"
    wb = openpyxl.Workbook()
    wb.active.title = "Sheet1"
    wb.save(tmp_path / "other.xlsx")
    return tmp_path / "other.xlsx"


@pytest.mark.parametrize("kind, reason", [
    ("xlsm", "workbook_macros"), ("vba", "workbook_macros"), ("zip_bomb", "zip_bomb"), ("xml_bomb", "xml_bomb"),
    ("ods", "not_xlsx"), ("garbage", "not_xlsx"), ("other", "not_review_workbook")])
def test_a_bad_workbook_is_quarantined_with_its_reason(cfg, engine, tmp_path, kind, reason):
    archive_images(engine, cfg.home, coco_images(1), [0.1])
    good = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    path = _bad(tmp_path, kind, good)
    report = take(cfg, engine, path)
    assert (report.processed, report.quarantined) == (0, 1)
    row = next(f for f in table(engine, File) if f.folder == "labeled")
    assert (row.state, row.reason, row.final_path) == ("quarantined", reason, f"quarantine/labeled/{path.name}")
    assert reason in REASONS and table(engine, Correction) == []


def test_too_many_rows_is_refused(cfg, engine, tmp_path, monkeypatch):
    archive_images(engine, cfg.home, coco_images(3), [0.1, 0.2, 0.3])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    monkeypatch.setattr(read, "MAX_ROWS", 5)
    take(cfg, engine, book)
    row = next(f for f in table(engine, File) if f.folder == "labeled")
    assert (row.reason, row.detail) == ("workbook_too_big", "more than 5 rows in the Review sheet")


def test_a_refused_workbook_is_closed_at_once(cfg, engine, tmp_path, monkeypatch):
    """Refused mid-sheet, the sheet's row reader kept the .xlsx open until the collector found it; CI then saw
    its ResourceWarning ('unclosed file ... review.xlsx') raised inside whichever test ran at that moment."""
    import os

    from pipeline.errors import Rejected

    archive_images(engine, cfg.home, coco_images(3), [0.1, 0.2, 0.3])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    monkeypatch.setattr(read, "MAX_ROWS", 5)

    def open_here() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(book.resolve())) if fds.is_dir() else 0

    with pytest.raises(Rejected) as refused:
        read.read_review(book)
    # The intake keeps the Rejected (and with it its traceback's frames) until the batch is committed.
    assert refused.value.code == "workbook_too_big" and open_here() == 0


def test_every_outcome_is_explained():
    assert set(OUTCOMES) >= {"labelled", "unchanged", "skipped", "review_copy", "unknown_class", "unknown_row_id",
                             "image_gone", "conflicting_rows"}


def test_the_review_workbook_opens_in_libreoffice_and_keeps_its_list(cfg, engine, tmp_path):
    archive_images(engine, cfg.home, coco_images(2), [0.1, 0.2])
    book = write_review_workbook(engine, tmp_path / "review.xlsx", home=cfg.home, options=options(cfg.home)).path
    pdf = libreoffice(book, "pdf", tmp_path / "pdf")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5000
    saved = libreoffice(book, "xlsx", tmp_path / "lo")  # what LibreOffice writes when a person saves it
    wb = openpyxl.load_workbook(saved)
    assert wb["lists"].sheet_state == "hidden" and wb["lists"]["A1"].value == "만화"
    (dv,) = wb["Review"].data_validations.dataValidation
    assert dv.type == "list" and "lists" in dv.formula1 and "H4" in str(dv.sqref)
