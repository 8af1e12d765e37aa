"""Corrections from the spreadsheet through the real daemon: the review workbook written, filled and saved by
LibreOffice, dropped into labeled/, and found as labels in the dataset; bad workbooks each with their reason."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from sqlalchemy import select

import watcher.jobs.upkeep as upkeep
from pipeline.inference.steps import DecodeStep, Result, Step
from pipeline.labels.dataset import _current
from pipeline.report.workbook import write_report
from pipeline.review.layout import SKIP
from storage.db import session_scope
from storage.tables import ClassName, Correction
from tests.conftest import copy_images, run_cli
from tests.pipeline.training_fakes import options_for
from tests.review_books import CLASSES, fill, libreoffice, soffice, with_macros, zip_bomb
from tests.watcher.conftest import configure, final_rows, home_engine, rows, running, wait_for


@pytest.fixture(autouse=True)
def quick_rebuilds(monkeypatch):
    monkeypatch.setattr(upkeep, "DATASET_REBUILD_SECONDS", 0.2)


class UnsureStep(Step):
    """Decodes, and answers 만화 with low confidence for every image: a model that needs a person."""

    def __init__(self):
        self.inner = DecodeStep(89_478_485)

    def __call__(self, items):
        out = []
        for r in self.inner(items):
            if isinstance(r, Result):
                r.predicted_class, r.confidence, r.model_version = "만화", 0.25, "v1"
                r.top5 = [["만화", 0.25], ["동화", 0.2], ["상상화", 0.1]]
            out.append(r)
        return out

    def close(self):
        self.inner.close()


def corrections(home) -> list[tuple[str, str]]:
    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            return [(c.class_name, c.outcome) for c in s.scalars(select(Correction).order_by(Correction.id))]
    finally:
        engine.dispose()


def snapshot_labels(home) -> dict[str, list[str]] | None:
    snap = _current(home / "dataset")
    if snap is None:
        return None
    return {p.stem.rsplit("_", 1)[0]: [ln.split()[0] for ln in p.read_text().splitlines()]
            for p in snap.glob("labels/*/*.txt")}


def test_a_filled_review_workbook_saved_by_libreoffice_becomes_labels(home, engine, tmp_path):
    soffice()  # skips with the reason when LibreOffice is missing
    configure(home, task="classify")
    with session_scope(engine) as s:
        s.add_all(ClassName(name=n, position=i) for i, n in enumerate(CLASSES))
    cfg_path = str(home / "coverwatch.yaml")
    with running(home, step=UnsureStep()):
        images = copy_images(home / "inbox", 3)
        final_rows(home, 3)
        out = run_cli("-c", cfg_path, "review", "export", "-o", str(tmp_path / "review.xlsx"))
        assert out.returncode == 0 and "3 images need a person" in out.stdout, out.stderr
        sheet = pd.read_excel(tmp_path / "review.xlsx", sheet_name="Review", header=2, dtype=str)
        ids = dict(zip(sheet["original_name"], sheet["id"]))
        first, second, third = (ids[p.name] for p in images)
        (tmp_path / "filled").mkdir()
        filled = fill(tmp_path / "review.xlsx", {first: "동화", second: SKIP, third: "공상과학"},
                      tmp_path / "filled" / "corrections.xlsx")
        saved = libreoffice(filled, "xlsx", tmp_path / "saved")  # the file as LibreOffice writes it
        shutil.copy(saved, home / "labeled" / "corrections.xlsx")
        wait_for(lambda: (snapshot_labels(home) or {}).get(images[0].stem) == ["1"], 60)  # 동화 is class id 1
        assert corrections(home) == [("동화", "labelled"), (SKIP, "skipped"), ("공상과학", "unknown_class")]
        assert snapshot_labels(home) == {images[0].stem: ["1"]}
        # Bad drops, and the same workbook again.
        shutil.copy(saved, home / "labeled" / "corrections again.xlsx")
        shutil.copy(saved, home / "labeled" / "macros.xlsm")
        with_macros(saved, home / "labeled" / "plain looking.xlsx")
        zip_bomb(home / "labeled" / "bomb.xlsx")
        final_rows(home, 8)
    by_name = {r.original_name: r for r in rows(home) if r.folder == "labeled"}
    assert {n: (r.state, r.reason) for n, r in by_name.items()} == {
        "corrections.xlsx": ("processed", None), "corrections again.xlsx": ("processed", None),
        "macros.xlsm": ("quarantined", "workbook_macros"), "plain looking.xlsx": ("quarantined", "workbook_macros"),
        "bomb.xlsx": ("quarantined", "zip_bomb")}
    assert "nothing new" in by_name["corrections again.xlsx"].detail
    assert (home / "archive" / "labeled" / "corrections.xlsx").is_file()
    assert len(corrections(home)) == 3
    report = write_report(engine, tmp_path / "report.xlsx", home=home, labels=options_for())
    summary = pd.read_excel(report, sheet_name="Summary")
    items = dict(zip(summary["item"], summary["value"]))
    assert items["labels from spreadsheets"] == 1
    assert any("1 rows of review workbooks were not used: unknown_class (1)" in str(v)
               for v in summary["value"])
    fixes = pd.read_excel(report, sheet_name="Corrections")
    assert sorted(fixes["outcome"]) == ["labelled", "skipped", "unknown_class"]
