"""What the report's small sheets say, read from the ORM tables as plain rows (no Excel here).

Every caller upgrades the database to the head revision before it writes a report, so every table is there;
the label findings are `pipeline.labels.quality`'s, by the config's thresholds, as in the dataset build.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.labels.classes import class_names
from pipeline.labels.dataset import label_history
from pipeline.labels.quality import Quality, assess_labels
from pipeline.training.registry import METRIC_FIELDS, SCORE
from pipeline.settings import DatasetOptions
from storage.tables import DatasetVersion, File, LabelEvent, ModelMetric, TrainingAttempt


def label_events(s: Session) -> list[dict]:
    """The `label_events` rows (kind, original_name, image_sha256, detail, time), oldest first."""
    stmt = (select(LabelEvent.kind, File.original_name, LabelEvent.image_sha256, LabelEvent.detail,
                   LabelEvent.created_at)
            .outerjoin(File, File.id == LabelEvent.file_id).order_by(LabelEvent.id))
    return [{"kind": k, "original_name": n, "image_sha256": h, "detail": d, "time": t}
            for k, n, h, d, t in s.execute(stmt)]


def label_quality(s: Session, rules: DatasetOptions) -> Quality:
    """Ambiguous boxes, conflicting drops and imbalance of the labels now, by the same rule and thresholds
    (the config's) as the dataset build: `pipeline.labels.quality.assess_labels` on every drop."""
    return assess_labels(label_history(s), names=class_names(s), iou_threshold=rules.ambiguity_iou,
                         warn_ratio=rules.imbalance_warn_ratio, balance=rules.balance,
                         near_bits=rules.near_duplicate_bits)


def dataset_balance(s: Session) -> dict | None:
    """Training images per class before and after oversampling in the last dataset build
    (`dataset_versions.stats["balance"]`: method, before, after), or None when none was built yet."""
    stats = s.scalar(select(DatasetVersion.stats).order_by(DatasetVersion.id.desc()).limit(1))
    return (stats or {}).get("balance")


def quality_issues(quality: Quality, conflicts: str) -> list[dict]:
    """Sheet rows from the label findings: ambiguous boxes, and conflicting drops with every class given and
    what training does with them (`training.conflicts`)."""
    out = []
    for o in quality.overlaps:
        out.append({"kind": "ambiguous_box", "original_name": o["name"], "image_sha256": o["image"],
                    "detail": f"{' / '.join(o['classes'])} on the same object (IoU {o['iou']:.2f})", "time": None})
    for c in quality.conflicts:
        if "near_duplicate_of" in c:
            out.append(_near_issue(c, conflicts))
            continue
        drops = "; ".join(f"drop {d}: {', '.join(cl) or 'no class'}" for d, cl in c["classes_by_drop"].items())
        last = next(reversed(c["classes_by_drop"].values()))
        excluded = conflicts == "exclude" and not c["settled"]
        fate = ("left out of training until a drop repeats one of them" if excluded
                else "trained as " + (", ".join(last) or "background"))
        out.append({"kind": "conflicting_labels", "original_name": ", ".join(c["names"]),
                    "image_sha256": c["image"],
                    "detail": f"labelled {', '.join(c['classes'])} in different drops ({drops}); {fate}",
                    "time": None, "excluded": excluded})
    return out


def _near_issue(c: dict, conflicts: str) -> dict:
    """Two photos of one cover labelled differently, as a conflicting_labels row naming the earlier photo."""
    here, there = (c["classes_by_drop"][d] for d in sorted(c["classes_by_drop"], key=int, reverse=True))
    excluded = conflicts == "exclude"
    fate = ("both left out of training until their labels agree" if excluded
            else "each trained with its own labels")
    detail = (f"near-duplicate of {c['near_duplicate_of']} ({c['near_bits']} bits apart): labelled "
              f"{', '.join(here) or 'no class'} here, {', '.join(there) or 'no class'} there; {fate}")
    return {"kind": "conflicting_labels", "original_name": c["name"], "image_sha256": c["image"],
            "detail": detail, "time": None, "excluded": excluded}


def training_attempts(s: Session) -> dict[int, list[dict]]:
    """Run id -> its tries (n, outcome, batch, imgsz, model, error, started, finished), oldest first."""
    out: dict[int, list[dict]] = {}
    for a in s.scalars(select(TrainingAttempt).order_by(TrainingAttempt.run_id, TrainingAttempt.n)):
        out.setdefault(a.run_id, []).append({
            "n": a.n, "outcome": a.outcome, "batch": a.batch, "imgsz": a.imgsz, "model": a.model,
            "error": a.reason, "started": a.started_at, "finished": a.finished_at})
    return out


def model_metrics(s: Session) -> dict[int, dict[str | None, dict[str, float]]]:
    """Model version id -> class name (None: overall) -> its latest figures (`pipeline.training.registry` records them)."""
    out: dict[int, dict[str | None, dict[str, float]]] = {}
    for m in s.scalars(select(ModelMetric).order_by(ModelMetric.id)):
        figures = {k: getattr(m, k) for k in METRIC_FIELDS if getattr(m, k) is not None}
        out.setdefault(m.model_version_id, {})[m.class_name] = figures
    return out


def scalar_metrics(metrics: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def primary_metric(champion, runs) -> str | None:
    """The figure a model is judged by (`pipeline.training.registry.SCORE`): for the champion's task, else the last
    run's."""
    task = champion.task if champion is not None else next(
        ((r.params or {}).get("task") for r, _mv in reversed(runs) if (r.params or {}).get("task")), None)
    return SCORE.get(task)


def per_class_metrics(table: dict[str | None, dict] | None) -> tuple[list[str], list[list]]:
    """A model's per-class figures from its `model_metrics` rows: (metric names, rows of [class, value...])."""
    per = {k: v for k, v in (table or {}).items() if k is not None}
    names = [n for n in METRIC_FIELDS if any(n in m for m in per.values())]
    return names, [[cls, *(m.get(n) for n in names)] for cls, m in per.items()]


def class_rows(order: list[str], registered: set[str], counts: dict[str, dict[str, int]], quality: Quality,
               balance: dict | None = None) -> list[dict]:
    """One dict per class: the labels (`quality`'s counts of the current drops), predictions, share of labels,
    imbalance ratio, a warning in plain words, and the training images before and after oversampling in the
    last dataset build.

    Imbalance is `quality`'s (labelled images per class against the largest, flagged above
    training.imbalance_warn_ratio): the same finding as the dataset build's. A class only a pretrained model
    predicts (a coco name) is marked as such instead.
    """
    labelled = {c: quality.counts.get(c, {"images": 0, "boxes": 0}) for c in order}
    own = [c for c in order if c in registered or labelled[c]["boxes"]]
    total = sum(labelled[c]["boxes"] for c in own)
    before, after = (balance or {}).get("before") or {}, (balance or {}).get("after") or {}
    rows = []
    for c in order:
        n = labelled[c]["boxes"]
        ratio = quality.ratios.get(c) if c in own else None
        warning = None
        if c not in own:
            warning = "not one of your classes (predicted by a pretrained model)"
        elif total and not n:
            warning = "no labels yet: the model cannot learn this class"
        elif c in quality.imbalanced:
            warning = f"{ratio:.0f}x fewer labelled images than {quality.largest}: likely poorly recognised"
        rows.append({"class": c, "labels": n, "labelled_images": labelled[c]["images"],
                     **{k: counts.get(c, {}).get(k, 0) for k in ("predictions", "low_confidence", "detections")},
                     "share": n / total if total and c in own else None, "imbalance": ratio, "warning": warning,
                     "train_before": before.get(c, 0) if balance and c in own else None,
                     "train_after": after.get(c, before.get(c, 0)) if balance and c in own else None})
    return rows
