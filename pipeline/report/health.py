"""The report's "Label health" and "Class overlap" sheets: what the last label audit found (pipeline.training.audit).

Label health: the flagged images (a small thumbnail, the name, the given and the suggested class, cleanlab's
label-quality score, the fold, the review copy), the classes ranked by label quality, and the dataset's label
health score over time (one row per audit). Class overlap: the class pairs ranked with a recommendation, and a
matrix of given x suggested classes whose off-diagonal cells are coloured by count (a heat map).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from xlsxwriter.utility import xl_rowcol_to_cell

from pipeline.report.style import Book, Column, Table, write_blocks
from pipeline.report.thumbs import ROW_PT, Thumbnails
from pipeline.labels.health import weak_models
from storage.tables import AuditImage, ClassOverlap, File, LabelAudit, TrainingRun

log = logging.getLogger(__name__)

MAX_THUMBS = 1000  # past this, flagged rows have no picture: a workbook of tens of MB helps nobody

FLAGGED = [Column("thumbnail"), Column("original_name"), Column("given_class"), Column("suggested_class"),
           Column("label_quality", "float"), Column("fold", "int"), Column("review_copy", "link")]
RANKING = [Column("class (worst labels first)"), Column("label_issues", "int"), Column("label_noise", "float"),
           Column("class_label_quality", "float")]
HISTORY = [Column("audit", "date"), Column("run", "int"), Column("folds", "int"), Column("images", "int"),
           Column("flagged", "int"), Column("label_health", "float"), Column("fold_model_accuracy", "float"),
           Column("largest_class_share", "float")]
PAIRS = [Column("rank", "int"), Column("class_a"), Column("class_b"), Column("confused", "int"),
         Column("overlapping", "int"), Column("share_of_pair", "float"), Column("joint_probability", "float"),
         Column("recommendation")]


@dataclass
class AuditFindings:
    """The last audit's rows and every audit's score, as plain values."""

    flagged: list[dict] = field(default_factory=list)  # name, given, suggested, quality, fold, review, image
    ranking: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    health: float | None = None
    review_folder: str | None = None


def audit_findings(s: Session) -> AuditFindings:
    out = AuditFindings()
    audits = s.scalars(select(LabelAudit).join(TrainingRun, TrainingRun.id == LabelAudit.run_id)
                       .order_by(LabelAudit.id)).all()
    out.history = [{"time": a.created_at, "run": a.run_id, "folds": a.folds, "images": a.images,
                    "flagged": a.flagged, "health": a.health_score, "accuracy": a.accuracy,
                    "majority": a.majority_share} for a in audits]
    if not audits:
        return out
    last = audits[-1]
    out.health, out.review_folder, out.classes = last.health_score, last.review_folder, list(last.classes)
    out.ranking = list(last.class_ranking or [])
    rows = s.execute(select(AuditImage, File.original_name, File.location)
                     .outerjoin(File, File.id == AuditImage.file_id).where(AuditImage.audit_id == last.id)
                     .order_by(AuditImage.quality, AuditImage.id)).all()
    position = {c: i for i, c in enumerate(out.classes)}
    out.confusion = [[0] * len(out.classes) for _ in out.classes]
    for a, name, location in rows:
        if a.given_class in position and a.suggested_class in position:
            out.confusion[position[a.given_class]][position[a.suggested_class]] += 1
        if a.flagged:
            out.flagged.append({"name": name or a.image_sha256[:12], "given": a.given_class,
                                "suggested": a.suggested_class, "quality": a.quality, "fold": a.fold,
                                "review": a.review_path, "path": a.review_path or location, "sha": a.image_sha256})
    out.pairs = [{"rank": p.rank, "a": p.class_a, "b": p.class_b, "confused": p.confused,
                  "overlapping": p.overlapping, "share": p.share, "overlap": p.overlap,
                  "recommendation": p.recommendation}
                 for p in s.scalars(select(ClassOverlap).where(ClassOverlap.audit_id == last.id)
                                    .order_by(ClassOverlap.rank))]
    return out


def label_health_sheet(book: Book, f: AuditFindings, thumbs: Thumbnails | None = None) -> list[Table]:
    """Flagged images (a thumbnail of each, from the cache the other sheets use), the class ranking, the history."""
    flagged = [[None, r["name"], r["given"], r["suggested"], r["quality"], r["fold"], r["review"]]
               for r in f.flagged]
    ranking = [[r["class"], r["label_issues"], r["label_noise"], r["quality"]] for r in f.ranking]
    history = [[h["time"], h["run"], h["folds"], h["images"], h["flagged"], h["health"], h["accuracy"],
                h["majority"]] for h in f.history]
    tables = write_blocks(book, "Label health", [(FLAGGED, flagged), (RANKING, ranking), (HISTORY, history)])
    ws = tables[0].worksheet
    if f.flagged:
        ws.set_default_row(ROW_PT)
        ws.set_column(0, 0, 8)
    for r, row in enumerate(f.flagged[:MAX_THUMBS] if thumbs is not None else [], 1):
        if (picture := thumbs.picture(row["path"], row["sha"])) is not None:
            picture.place(ws, r, 0)
    return tables


def class_overlap_sheet(book: Book, f: AuditFindings) -> list[Table]:
    pairs = [[p["rank"], p["a"], p["b"], p["confused"], p["overlapping"], p["share"], p["overlap"],
              p["recommendation"]] for p in f.pairs]
    matrix_cols = [Column("given \\ suggested"), *(Column(c, "int") for c in f.classes)]
    matrix = [[c, *row] for c, row in zip(f.classes, f.confusion)]
    tables = write_blocks(book, "Class overlap", [(PAIRS, pairs), (matrix_cols, matrix)])
    n = len(f.classes)
    if n > 1:
        c0 = tables[1].first_col + 1
        cells = " ".join(xl_rowcol_to_cell(1 + i, c0 + j) for i in range(n) for j in range(n) if i != j)
        first = xl_rowcol_to_cell(1, c0 + 1)  # any cell of the ranges: XlsxWriter wants the first
        tables[1].worksheet.conditional_format(first, {"type": "3_color_scale", "multi_range": cells,
                                                       "min_color": "#FFFFFF", "mid_color": "#FFEB84",
                                                       "max_color": "#F8696B"})
    return tables


def health_warnings(f: AuditFindings) -> list[str]:
    """The Summary's lines about the last audit, in plain words."""
    if f.health is None:
        return []
    out = []
    last = f.history[-1]
    if weak_models(last["accuracy"], last["majority"]):
        out.append(f"The last label audit's fold models were right on {last['accuracy']:.0%} of the images, no better "
                   f"than always answering the largest class ({last['majority']:.0%}): its findings say little about "
                   "the labels. Audit with more epochs (training.audit_epochs) or a pretrained training.base.")
    if f.flagged:
        where = f" Copies with their labels are in {f.review_folder}/ for labelImg." if f.review_folder else ""
        out.append(f"The last label audit flags {len(f.flagged)} images as likely mislabelled (label health "
                   f"{f.health:.2f}): see the Label health sheet.{where}")
    for p in f.pairs:
        if not p["recommendation"].startswith("allow"):
            out.append(f"Classes {p['a']} and {p['b']} overlap ({p['overlapping']} images, {p['share']:.0%} of the "
                       f"pair's images): {p['recommendation']}. See the Class overlap sheet.")
    return out
