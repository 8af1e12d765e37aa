"""The Model quality sheet: how each model version does per class, how sure it may be, what it confuses.

Three tables side by side, newest version first, each from the version's latest evaluation on the frozen
validation split (a champion is evaluated again on every new split, beside the candidate):

- per class: one row per version x class: validation images, precision, recall (detect: mAP50 too);
- calibration: the temperature fitted on the split and the expected calibration error before and after it
  (classify; detect confidences are left as the model gives them), and the promotion decision in words;
- confusion: one row per version x true class, one column per predicted class (detect: "background" too).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.report.style import Book, Column, Table, write_blocks
from pipeline.training.registry import latest_class_figures, latest_confusions
from storage.tables import ModelVersion

SHEET = "Model quality"
PER_CLASS = [Column("version"), Column("state"), Column("class"), Column("val_images", "int"),
             Column("precision", "float"), Column("recall", "float"), Column("map50", "float")]
CALIBRATION = [Column("version"), Column("task"), Column("temperature", "float"), Column("ece_uncalibrated", "float"),
               Column("ece_calibrated", "float"), Column("decision")]


def model_quality_sheet(book: Book, s: Session) -> list[Table]:
    versions = list(s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))
    figures, confusions = latest_class_figures(s), latest_confusions(s)
    per_class = [[mv.version, mv.state, c["class_name"], c.get("images"), c.get("precision"), c.get("recall"),
                  c.get("map50")] for mv in versions for c in figures.get(mv.id, [])]
    calibration = [[mv.version, mv.task, mv.temperature, mv.ece_before, mv.ece_after, mv.decision]
                   for mv in versions]
    columns, matrix = confusion_rows([(mv.version, confusions.get(mv.id)) for mv in versions])
    return write_blocks(book, SHEET, [(PER_CLASS, per_class), (CALIBRATION, calibration), (columns, matrix)])


def confusion_rows(matrices: list[tuple[str, dict | None]]) -> tuple[list[Column], list[list]]:
    """Every version's matrix in one table: the predicted classes of all of them as columns (in the order
    first met), a cell left blank where that version had no such class."""
    predicted = list(dict.fromkeys(n for _v, c in matrices if c for n in c["classes"]))
    rows = []
    for version, c in matrices:
        for name, row in zip(*(c["classes"], c["matrix"]) if c else ((), ())):
            cells = dict(zip(c["classes"], row))
            rows.append([version, name, *(cells.get(p) for p in predicted)])
    return [Column("version"), Column("true \\ predicted"), *(Column(p, "int") for p in predicted)], rows


def gate_warnings(versions) -> list[str]:
    """The Summary's line for a candidate the class gate refused: which class it lost (see the sheet)."""
    return [f"Model {mv.version} was not promoted: {mv.decision.removeprefix('rejected: ')}. A class the model "
            f"stopped recognising often means too few or mislabelled covers of it; see the {SHEET} sheet."
            for mv in versions if mv.state == "rejected" and "training.max_class_drop" in (mv.decision or "")]
