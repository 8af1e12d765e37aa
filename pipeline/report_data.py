"""What the report's small sheets say, read from the database as plain rows (no Excel here).

Some of it is produced by parts of coverwatch still being written (label events, training attempts, per-class
metrics). Those are read defensively: a table or a JSON key that is not there yet gives an empty sheet, never a
made-up row. `label_events` is the one place that knows the label-issue table; point it at a new one there.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Connection, MetaData, Table, inspect, select

from storage.tables import File, Label

AMBIGUOUS_IOU = 0.8  # two boxes of different classes over the same area: the "labelled twice" cover
IMBALANCE_WARN = 10.0  # the most labelled class has this many times the labels of another
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


def dataset_quality(conn: Connection) -> dict | None:
    """The label quality measured when the managed dataset was last built (`dataset_versions.stats["quality"]`:
    overlaps, conflicts, cooccurrence), or None when no dataset was built yet."""
    if not inspect(conn).has_table("dataset_versions"):
        return None
    versions = Table("dataset_versions", MetaData(), autoload_with=conn)
    if "stats" not in versions.c:
        return None
    stats = conn.scalar(select(versions.c.stats).order_by(versions.c.id.desc()).limit(1))
    quality = stats.get("quality") if isinstance(stats, dict) else None
    return quality if isinstance(quality, dict) else None


def quality_issues(quality: dict) -> list[dict]:
    """Sheet rows from the dataset build's findings: ambiguous boxes and conflicting drops."""
    out = []
    for o in quality.get("overlaps") or []:
        classes = " / ".join(o.get("classes") or [])
        out.append({"kind": "ambiguous_box", "original_name": o.get("name"), "image_sha256": o.get("image"),
                    "detail": f"{classes} on the same object (IoU {o.get('iou', 0):.2f})", "time": None})
    for c in quality.get("conflicts") or []:
        drops = "; ".join(f"drop {d}: {', '.join(cl)}" for d, cl in (c.get("classes_by_drop") or {}).items())
        out.append({"kind": "conflicting_labels", "original_name": ", ".join(c.get("names") or []),
                    "image_sha256": c.get("image"), "detail": f"labelled differently: {drops}", "time": None})
    return out


def quality_matrix(quality: dict, classes: list[str]) -> pd.DataFrame:
    """The build's co-occurrence (boxes of two classes on one object), over `classes`."""
    co = quality.get("cooccurrence") or {}
    return pd.DataFrame([[int(co.get(a, {}).get(b, 0)) for b in classes] for a in classes], index=classes,
                        columns=classes)


def current_labels(conn: Connection) -> pd.DataFrame:
    """The labels in force (not replaced), with the file they came from."""
    stmt = (select(Label.image_sha256, Label.class_name, Label.cx, Label.cy, Label.w, Label.h,
                   Label.source_format, File.original_name)
            .join(File, File.id == Label.file_id).where(Label.replaced_at.is_(None)).order_by(Label.id))
    return pd.DataFrame(conn.execute(stmt).all(),
                        columns=["image_sha256", "class_name", "cx", "cy", "w", "h", "source_format",
                                 "original_name"])


def derived_label_issues(labels: pd.DataFrame, *, skip_kinds: Iterable[str] = ()) -> list[dict]:
    """Ambiguous boxes (different classes over one area) and conflicting whole-image labels, straight from
    the labels; kinds that `label_events` already reports are skipped so nothing is listed twice."""
    skip = set(skip_kinds)
    out: list[dict] = []
    if labels.empty:
        return out
    for sha, group in labels.groupby("image_sha256", sort=False):
        name = group["original_name"].iloc[0]
        whole = group[group["cx"].isna()]
        classes = sorted(set(whole["class_name"]))
        if len(classes) > 1 and "conflicting_labels" not in skip:
            out.append({"kind": "conflicting_labels", "original_name": name, "image_sha256": sha,
                        "detail": "labelled as " + ", ".join(classes), "time": None})
        if "ambiguous_box" in skip:
            continue
        boxes = group[group["cx"].notna()][["class_name", "cx", "cy", "w", "h"]].itertuples(index=False)
        for a, b in itertools.combinations(list(boxes), 2):
            if a.class_name != b.class_name and (iou := _iou(a, b)) >= AMBIGUOUS_IOU:
                out.append({"kind": "ambiguous_box", "original_name": name, "image_sha256": sha,
                            "detail": f"{a.class_name} / {b.class_name} on the same area (IoU {iou:.2f})",
                            "time": None})
    return out


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a.cx - a.w / 2, a.cy - a.h / 2, a.cx + a.w / 2, a.cy + a.h / 2
    bx1, by1, bx2, by2 = b.cx - b.w / 2, b.cy - b.h / 2, b.cx + b.w / 2, b.cy + b.h / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def cooccurrence(labels: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Images labelled with both classes (the diagonal: images with that class at all)."""
    if labels.empty:
        return pd.DataFrame(0, index=classes, columns=classes)
    present = pd.crosstab(labels["image_sha256"], labels["class_name"]).clip(upper=1)
    present = present.reindex(columns=classes, fill_value=0)
    return present.T.dot(present).astype(int)


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


def class_rows(order: list[str], registered: set[str], counts: dict[str, dict[str, int]]) -> list[dict]:
    """One dict per class: the counts, share of labels, imbalance ratio, and a warning in plain words.

    Balance is judged among the user's own classes (registered or labelled); a class only a pretrained model
    predicts (a coco name) is marked as such instead.
    """
    labels = {c: counts.get(c, {}).get("labels", 0) for c in order}
    own = [c for c in order if c in registered or labels[c]]
    total = sum(labels[c] for c in own)
    top_class = max(own, key=lambda c: labels[c]) if own else None
    top = labels[top_class] if top_class else 0
    rows = []
    for c in order:
        n = labels[c]
        ratio = top / n if n and c in own else None
        warning = None
        if c not in own:
            warning = "not one of your classes (predicted by a pretrained model)"
        elif total and not n:
            warning = "no labels yet: the model cannot learn this class"
        elif ratio is not None and ratio >= IMBALANCE_WARN:
            warning = f"{ratio:.0f}x fewer labels than {top_class}: likely poorly recognised"
        rows.append({"class": c, **{k: counts.get(c, {}).get(k, 0) for k in
                                    ("labels", "labelled_images", "predictions", "low_confidence", "detections")},
                     "share": n / total if total and c in own else None, "imbalance": ratio, "warning": warning})
    return rows
