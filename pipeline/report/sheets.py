"""The report's sheets, one function each. Big sheets stream from the database; small ones are lists."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from pipeline.errors import REASONS
from pipeline.report.data import per_class_metrics, scalar_metrics
from pipeline.report.style import Book, Column, Table, write_blocks
from pipeline.report.thumbs import ROW_PT, Thumbnails
from storage.queries import latest_detections_stmt, latest_predictions_stmt, quarantined_stmt

# A name links to its file, as its path does; the path stays a column of its own, for filters and pandas.
PREDICTIONS = [Column("id", "int"), Column("original_name", "link"), Column("predicted_class"), Column("confidence", "pct"),
               Column("model_version"), Column("time", "date"), Column("archive_path", "link"), Column("looks_like")]
DETECTIONS = [Column("prediction_id", "int"), Column("original_name"), Column("class_name"),
              Column("confidence", "pct"), *(Column(n, "float") for n in ("x1", "y1", "x2", "y2"))]
CLASSES = [Column("class"), Column("labels", "int"), Column("labelled_images", "int"), Column("predictions", "int"),
           Column("low_confidence", "int"), Column("detections", "int"), Column("share_of_labels", "pct"),
           Column("imbalance_ratio", "float"), Column("warning"), Column("train_images", "int"),
           Column("train_entries_oversampled", "int")]
ISSUES = [Column("kind"), Column("original_name"), Column("image_sha256"), Column("detail"), Column("time", "date")]
RUNS = [Column("run", "int"), Column("attempt", "int"), Column("state"), Column("trigger"), Column("model_version"),
        Column("promoted"), Column("requested", "date"), Column("started", "date"), Column("finished", "date"),
        Column("minutes", "float"), Column("epoch", "int"), Column("epochs", "int"), Column("batch", "any"),
        Column("imgsz", "any"), Column("base", "any"), Column("device", "any"), Column("error")]
QUARANTINE = [Column("original_name", "link"), Column("reason"), Column("explanation"), Column("detail"),
              Column("time", "date"), Column("path", "link")]
THUMBNAIL = Column("thumbnail")  # the last column, where there are thumbnails: a picture over an empty cell


def _stream(book: Book, conn: Connection, name: str, columns, stmt, shape, chunk_rows: int,
            thumbs: Thumbnails | None = None, image=None) -> Table:
    """Rows of `stmt` as `shape` makes them; with `thumbs`, the newest rows (by the first column) with a thumbnail
    of the file `image(row)` names: (path relative to home, sha256)."""
    floor = thumbs.floor(conn, stmt) if thumbs is not None else None
    if floor is None:
        table = book.table(name, columns)
    else:
        table = book.table(name, [*columns, THUMBNAIL], row_height=ROW_PT)
    result = conn.execution_options(yield_per=chunk_rows).execute(stmt)
    for part in result.partitions():
        if floor is None:
            table.extend(map(shape, part))
            continue
        for r in part:
            table.append((*shape(r), None), thumbs.picture(*image(r)) if r[0] >= floor else None)
    table.close()
    return table


def predictions_sheet(book: Book, conn: Connection, chunk_rows: int, thumbs: Thumbnails | None = None) -> Table:
    def shape(r):
        looks_like = None if r[8] is None else f"#{r[8]} {r[9]} ({r[10]} bits apart)"
        path = r[6] if r[7] == "processed" else None
        return (r[0], (r[1], path) if path else r[1], r[2], r[3], r[4], r[5], path, looks_like)

    def image(r):
        return (r[6] if r[7] == "processed" else None), r[11]

    return _stream(book, conn, "Predictions", PREDICTIONS, latest_predictions_stmt(), shape, chunk_rows, thumbs,
                   image)


def detections_sheet(book: Book, conn: Connection, chunk_rows: int) -> Table:
    return _stream(book, conn, "Detections", DETECTIONS, latest_detections_stmt(), tuple, chunk_rows)


def quarantine_sheet(book: Book, conn: Connection, chunk_rows: int, thumbs: Thumbnails | None = None) -> Table:
    def shape(r):
        _id, name, reason, detail, processed_at, updated_at, path, _sha = r
        shown = (name, path) if path else name
        return (shown, reason, REASONS.get(reason), detail, processed_at or updated_at, path)

    return _stream(book, conn, "Quarantine", QUARANTINE, quarantined_stmt(), shape, chunk_rows, thumbs,
                   lambda r: (r[6], r[7]))


def classes_sheet(book: Book, rows: list[dict]) -> Table:
    """Per class counts, imbalance and warnings, the last dataset build's training images before and after
    oversampling, and a bar chart of labels and predictions per class."""
    keys = ("class", "labels", "labelled_images", "predictions", "low_confidence", "detections", "share",
            "imbalance", "warning", "train_before", "train_after")
    (table,) = write_blocks(book, "Classes", [(CLASSES, [[r[k] for k in keys] for r in rows])])
    n = len(rows)
    if n:
        chart = book.wb.add_chart({"type": "bar"})
        name = table.worksheet.get_name()
        for col in (1, 3):  # labels, predictions
            chart.add_series({"name": [name, 0, col], "categories": [name, 1, 0, n, 0],
                              "values": [name, 1, col, n, col], "gap": 60})
        chart.set_title({"name": "Class distribution"})
        chart.set_y_axis({"reverse": True})  # first class on top, as in the table
        chart.set_legend({"position": "bottom"})
        chart.set_size({"width": 640, "height": min(600, max(300, 60 + 28 * n))})  # inside one printed page
        table.worksheet.insert_chart(1, len(CLASSES) + 1, chart)
    return table


def label_issues_sheet(book: Book, issues: list[dict], classes: list[str], matrix: list[list[int]],
                       meaning: str) -> list[Table]:
    """Ambiguous boxes and conflicting labels; beside them, the class co-occurrence matrix over `classes`
    (`meaning`: what counts as together, "same object" or "same image")."""
    keys = ("kind", "original_name", "image_sha256", "detail", "time")
    matrix_cols = [Column(f"co-occurrence ({meaning})"), *(Column(c, "int") for c in classes)]
    matrix_rows = [[c, *row] for c, row in zip(classes, matrix)]
    return write_blocks(book, "Label issues", [(ISSUES, [[i[k] for k in keys] for i in issues]),
                                               (matrix_cols, matrix_rows)])


def training_sheet(book: Book, runs: Sequence, champion, metric: str | None, *, attempts: dict[int, list[dict]],
                   figures: dict[int, dict]) -> list[Table]:
    """One row per run and per attempt inside it (out-of-memory retries), the champion's per-class metrics
    beside them, and a line chart of `metric` across runs.

    `attempts`: run id -> its tries (`training_attempts`); `figures`: model version id -> class -> metrics
    (`model_metrics`).
    """
    overall = {run.id: scalar_metrics(run.metrics) for run, _mv in runs}
    names = list(dict.fromkeys(k for m in overall.values() for k in m))
    columns = [*RUNS, *(Column(n, "float") for n in names)]
    rows = []
    for run, mv in runs:
        rows.append(_run_row(run, mv, names, overall[run.id]))
        for a in attempts.get(run.id, []):
            rows.append([run.id, a["n"], a["outcome"], None, None, None, None, a["started"], a["finished"], None,
                         None, None, a["batch"], a["imgsz"], a["model"], None, a["error"]])
    per_names, per_rows = per_class_metrics(figures.get(champion.id) if champion else None)
    per_cols = [Column("class (champion)"), *(Column(n, "float") for n in per_names)]
    tables = write_blocks(book, "Training runs", [(columns, rows), (per_cols, per_rows)])
    if metric in names and any(r[len(RUNS) + names.index(metric)] is not None for r in rows):
        _metric_chart(book, tables[0], len(rows), len(RUNS) + names.index(metric), metric, len(columns) + 1,
                      len(per_cols))
    return tables


def _run_row(run, mv, names: list[str], metrics: dict[str, float]) -> list:
    params = run.params or {}
    minutes = None
    if run.started_at and run.finished_at:
        minutes = round((run.finished_at - run.started_at).total_seconds() / 60, 2)
    promoted = None
    if mv is not None:
        promoted = "yes (champion)" if mv.state == "champion" else "yes" if mv.promoted_at else "no"
    return [run.id, 0, run.state, run.trigger, mv.version if mv else None, promoted, run.requested_at,
            run.started_at, run.finished_at, minutes, run.epoch, run.epochs, params.get("batch"),
            params.get("imgsz"), params.get("base"), params.get("device"), run.error,
            *(metrics.get(n) for n in names)]


def _metric_chart(book: Book, table: Table, n: int, col: int, metric: str, at_col: int, skip_cols: int) -> None:
    name = table.worksheet.get_name()
    chart = book.wb.add_chart({"type": "line"})
    chart.add_series({"name": metric, "categories": [name, 1, 0, n, 0], "values": [name, 1, col, n, col],
                      "marker": {"type": "circle"}})
    chart.show_blanks_as("span")  # attempt rows have no metric
    chart.set_title({"name": f"{metric} across training runs"})
    chart.set_x_axis({"name": "run"})
    chart.set_legend({"none": True})
    table.worksheet.insert_chart(1, at_col + skip_cols + 1, chart)
