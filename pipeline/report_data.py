"""What the report's small sheets say, read from the database as plain rows (no Excel here).

Some of it is produced by parts of coverwatch still being written (label events, training attempts, per-class
metrics). Those are read defensively: a table or a JSON key that is not there yet gives an empty sheet, never a
made-up row. `label_events` is the one place that knows the label-issue table; point it at a new one there.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Connection, MetaData, Table, inspect, select
from sqlalchemy.orm import Session

from pipeline.classes import class_names
from pipeline.dataset import label_history
from pipeline.quality import Quality, assess_labels
from storage.tables import File
# Metrics a champion is judged by, in the order we look for them (Ultralytics' names first).
PRIMARY_METRICS = ("metrics/mAP50-95(B)", "mAP50-95", "map50_95", "map", "metrics/accuracy_top1", "top1",
                   "accuracy_top1", "accuracy", "fitness")


def label_events(conn: Connection) -> list[dict]:
    """Rows of the `label_events` table (kind, original_name, image_sha256, detail, time), if it exists.

    Reflected rather than imported: the table arrives with the labelled-drops work, and a report must not
    break on a database a step older or newer than this code.
    """
    if not inspect(conn).has_table("label_events"):
        return []
    events = Table("label_events", MetaData(), autoload_with=conn)
    stmt = (select(events.c.kind, File.original_name, events.c.image_sha256, events.c.detail, events.c.created_at)
            .outerjoin(File, File.id == events.c.file_id).order_by(events.c.id))
    return [{"kind": k, "original_name": n, "image_sha256": h, "detail": d, "time": t}
            for k, n, h, d, t in conn.execute(stmt)]


def label_quality(s: Session, *, iou_threshold: float, warn_ratio: float, balance: str = "none") -> Quality:
    """Ambiguous boxes, conflicting drops and imbalance of the labels now, by the same rule and thresholds
    (the config's) as the dataset build: `pipeline.quality.assess_labels` on every drop."""
    return assess_labels(label_history(s), names=class_names(s), iou_threshold=iou_threshold, warn_ratio=warn_ratio,
                         balance=balance)


def dataset_balance(conn: Connection) -> dict | None:
    """Training images per class before and after oversampling in the last dataset build
    (`dataset_versions.stats["balance"]`: method, before, after), or None when none was built yet."""
    if not inspect(conn).has_table("dataset_versions"):
        return None
    versions = Table("dataset_versions", MetaData(), autoload_with=conn)
    if "stats" not in versions.c:
        return None
    stats = conn.scalar(select(versions.c.stats).order_by(versions.c.id.desc()).limit(1))
    balance = stats.get("balance") if isinstance(stats, dict) else None
    return balance if isinstance(balance, dict) and "before" in balance else None


def quality_issues(quality: Quality, conflicts: str = "exclude") -> list[dict]:
    """Sheet rows from the label findings: ambiguous boxes, and conflicting drops with every class given and
    what training does with them (`training.conflicts`)."""
    out = []
    for o in quality.overlaps:
        classes = " / ".join(o.get("classes") or [])
        out.append({"kind": "ambiguous_box", "original_name": o.get("name"), "image_sha256": o.get("image"),
                    "detail": f"{classes} on the same object (IoU {o.get('iou', 0):.2f})", "time": None})
    for c in quality.conflicts:
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


def quality_matrix(quality: Quality, classes: list[str]) -> pd.DataFrame:
    """Boxes of two classes on one object (in one drop or across drops), over `classes`."""
    return pd.DataFrame(quality.matrix(classes), index=classes, columns=classes, dtype=int)


def _table(conn: Connection, name: str) -> Table | None:
    return Table(name, MetaData(), autoload_with=conn) if inspect(conn).has_table(name) else None


def training_attempts(conn: Connection) -> dict[int, list[dict]]:
    """Run id -> its tries from the `training_attempts` table (n, outcome, batch, imgsz, model, error, started,
    finished), oldest first; {} until the table exists."""
    t = _table(conn, "training_attempts")
    if t is None:
        return {}
    out: dict[int, list[dict]] = {}
    for row in conn.execute(select(t).order_by(t.c.run_id, t.c.id)).mappings():
        out.setdefault(row["run_id"], []).append({
            "n": row.get("n"), "outcome": row.get("outcome"), "batch": row.get("batch"),
            "imgsz": row.get("imgsz"), "model": row.get("model"), "error": row.get("reason"),
            "started": row.get("started_at"), "finished": row.get("finished_at")})
    return out


METRIC_COLUMNS = ("images", "instances", "precision", "recall", "map50", "map50_95", "top1", "top5")


def model_metrics(conn: Connection) -> dict[int, dict[str | None, dict[str, float]]]:
    """Model version id -> class name (None: overall) -> its latest figures, from the `model_metrics` table;
    {} until the table exists."""
    t = _table(conn, "model_metrics")
    if t is None:
        return {}
    out: dict[int, dict[str | None, dict[str, float]]] = {}
    for row in conn.execute(select(t).order_by(t.c.id)).mappings():
        figures = {k: row[k] for k in METRIC_COLUMNS if k in row and row[k] is not None}
        out.setdefault(row["model_version_id"], {})[row.get("class_name")] = figures
    return out


def run_attempts(params: dict | None, metrics: dict | None) -> list[dict]:
    """The tries of one training run (batch, imgsz, outcome), when the trainer recorded them."""
    for source in (params or {}, metrics or {}):
        attempts = source.get("attempts")
        if isinstance(attempts, list):
            return [a for a in attempts if isinstance(a, dict)]
    return []


def scalar_metrics(metrics: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def primary_metric(candidates: Iterable[dict]) -> str | None:
    """The metric a champion is judged by: the first of PRIMARY_METRICS that any run reports."""
    seen: dict[str, None] = {}
    for m in candidates:
        seen.update(dict.fromkeys(m))
    return next((k for k in PRIMARY_METRICS if k in seen), next(iter(seen), None))


def per_class_metrics(metrics: dict | None, table: dict[str | None, dict] | None = None
                      ) -> tuple[list[str], list[list]]:
    """The champion's per-class metrics: from the `model_metrics` rows when there are any, else from its JSON
    {"per_class": {name: {metric: value}}} (or a list of dicts with a "class" key).
    Returns (metric names, rows of [class, value...])."""
    raw = {k: v for k, v in (table or {}).items() if k is not None} or (metrics or {}).get("per_class")
    if isinstance(raw, list):
        raw = {str(d.get("class", d.get("name", ""))): d for d in raw if isinstance(d, dict)}
    if not isinstance(raw, dict):
        return [], []
    per = {str(k): scalar_metrics(v if isinstance(v, dict) else {}) for k, v in raw.items()}
    names = list(dict.fromkeys(k for m in per.values() for k in m))
    return names, [[cls, *(m.get(n) for n in names)] for cls, m in per.items()]


def class_rows(order: list[str], registered: set[str], counts: dict[str, dict[str, int]], quality: Quality,
               balance: dict | None = None) -> list[dict]:
    """One dict per class: the counts, share of labels, imbalance ratio, a warning in plain words, and the
    training images before and after oversampling in the last dataset build.

    Imbalance is `quality`'s (labelled images per class against the largest, flagged above
    training.imbalance_warn_ratio): the same finding as the dataset build's. A class only a pretrained model
    predicts (a coco name) is marked as such instead.
    """
    labels = {c: counts.get(c, {}).get("labels", 0) for c in order}
    own = [c for c in order if c in registered or labels[c]]
    total = sum(labels[c] for c in own)
    before, after = (balance or {}).get("before") or {}, (balance or {}).get("after") or {}
    rows = []
    for c in order:
        n = labels[c]
        ratio = quality.ratios.get(c) if c in own else None
        warning = None
        if c not in own:
            warning = "not one of your classes (predicted by a pretrained model)"
        elif total and not n:
            warning = "no labels yet: the model cannot learn this class"
        elif c in quality.imbalanced:
            warning = f"{ratio:.0f}x fewer labelled images than {quality.largest}: likely poorly recognised"
        rows.append({"class": c, **{k: counts.get(c, {}).get(k, 0) for k in
                                    ("labels", "labelled_images", "predictions", "low_confidence", "detections")},
                     "share": n / total if total and c in own else None, "imbalance": ratio, "warning": warning,
                     "train_before": before.get(c, 0) if balance and c in own else None,
                     "train_after": after.get(c, before.get(c, 0)) if balance and c in own else None})
    return rows
