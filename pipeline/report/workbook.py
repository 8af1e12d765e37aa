"""The Excel report: what was classified, how the classes are balanced, which labels look wrong, how training went.

Example:
    >>> write_report(engine, home / "reports" / "now.xlsx", home=home, low_confidence=0.4,
    ...              labels=dataset_options(cfg))     # watcher.config: the thresholds that judge labels
    PosixPath('.../reports/now.xlsx')
    >>> publish_report(engine, home / "reports", home=home, keep=48, labels=...)   # dated + latest.xlsx, pruned

The workbook is streamed (XlsxWriter's constant_memory; the database read in chunks), so a history of a
million predictions costs time, not memory. It is written to a temporary name and renamed, so a reader never
sees half a report.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone, tzinfo
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from xlsxwriter.exceptions import XlsxWriterException

from pipeline.report.corrections import correction_figures, correction_items, corrections_sheet
from pipeline.report.dashboard import write_dashboard
from pipeline.report.data import (
    class_rows,
    dataset_balance,
    label_events,
    label_quality,
    model_metrics,
    per_class_metrics,
    primary_metric,
    quality_issues,
    scalar_metrics,
    training_attempts,
)
from pipeline.report.quality import gate_warnings, model_quality_sheet
from pipeline.report.health import audit_findings, class_overlap_sheet, health_warnings, label_health_sheet
from pipeline.report.sheets import (
    classes_sheet,
    detections_sheet,
    label_issues_sheet,
    predictions_sheet,
    quarantine_sheet,
    training_sheet,
)
from pipeline.report.style import EXCEL_MAX_ROWS, Book
from pipeline.report.thumbs import Thumbnails
from pipeline.settings import DatasetOptions, ReviewOptions, ThumbnailOptions
from storage.db import session_scope
from storage.errors import CoverwatchError
from storage.files import replacing
from storage.queries import (
    champion,
    class_counts,
    quarantine_reasons,
    report_counts,
    status_summary,
    training_runs_with_models,
)
from storage.tables import ClassName, Report

log = logging.getLogger(__name__)

LATEST = "latest.xlsx"
PREFIX = "coverwatch-"
PLOTS = ("confusion_matrix.png", "results.png")  # what Ultralytics leaves in a model's folder
STATE_WORDS = {"processed": "files processed", "quarantined": "files quarantined", "pending": "files pending",
               "awaiting_model": "files awaiting a model", "awaiting_partner": "files awaiting a label partner",
               "requeued": "files requeued (history)"}


class ReportError(CoverwatchError):
    """Raised when the workbook cannot be written (folder missing or read-only, disk full)."""

    code = "report_failed"


def write_report(engine: Engine, out_path: Path, *, home: Path, now: datetime | None = None,
                 labels: DatasetOptions, tz: tzinfo | None = None, low_confidence: float = 0.4,
                 thumbnails: ThumbnailOptions | None = None, max_rows_per_sheet: int = EXCEL_MAX_ROWS,
                 chunk_rows: int = 5000) -> Path:
    """Write the workbook to `out_path` atomically, record it in the `reports` table, return the path.

    `home` resolves the paths stored in the database (archive links, model folders); `tz` is the zone the
    dates are shown in (default: this machine's); `low_confidence` colours confidences below it; `labels`
    carries the config's thresholds for ambiguous boxes and imbalance (the dataset build's own options);
    `thumbnails` (`reports.thumbnails` and the decoding limits; None: none) puts a thumbnail beside the newest
    rows of Predictions and Quarantine, cached under `home/.thumbs/`.
    """
    now = now or datetime.now(timezone.utc)
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out_path, durable=True) as tmp:
            book = Book(tmp, home=home, tz=tz, low_confidence=low_confidence, max_rows=max_rows_per_sheet)
            thumbs = Thumbnails(home, thumbnails) if thumbnails and thumbnails.newest > 0 else None
            try:
                rows = _fill(book, engine, home=home, now=now, chunk_rows=chunk_rows, rules=labels, thumbs=thumbs)
            except BaseException:
                book.discard()
                raise
            book.close()
    except (OSError, XlsxWriterException) as exc:
        raise ReportError(f"report: cannot write {out_path}: {exc}") from None
    with session_scope(engine) as s:
        s.add(Report(path=_shown(out_path, home), rows=rows, created_at=now))
    log.info("report written: %s (%d predictions)", out_path, rows)
    return out_path


def publish_report(engine: Engine, folder: Path, *, home: Path, keep: int, now: datetime | None = None,
                   review: ReviewOptions | None = None, **options) -> Path:
    """The scheduled report: folder/coverwatch-YYYYMMDD-HHMM.xlsx, a copy as folder/latest.xlsx, and only the
    newest `keep` dated reports left. Returns the dated path. With `review`, the review workbook beside it
    (pipeline.review.export: review-YYYYMMDD-HHMM.xlsx and review-latest.xlsx)."""
    now = now or datetime.now(timezone.utc)
    stamp = now.astimezone(options.get("tz")).strftime("%Y%m%d-%H%M")
    path = write_report(engine, Path(folder) / f"{PREFIX}{stamp}.xlsx", home=home, now=now, **options)
    try:
        with replacing(path.with_name(LATEST)) as tmp:
            shutil.copyfile(path, tmp)
    except OSError as exc:
        raise ReportError(f"report: cannot update {path.with_name(LATEST)}: {exc}") from None
    _prune(Path(folder), keep)
    if review is not None:
        _publish_review(engine, Path(folder), home=home, keep=keep, now=now, review=review)
    return path


def _publish_review(engine: Engine, folder: Path, *, home: Path, keep: int, now: datetime,
                    review: ReviewOptions) -> None:
    """The report is written; a review workbook that cannot be is logged, not raised."""
    from pipeline.review.export import publish_review_workbook

    try:
        publish_review_workbook(engine, folder, home=home, options=review, keep=keep, now=now)
    except (OSError, XlsxWriterException) as exc:
        log.warning("the review workbook could not be written: %s", exc)


def _prune(folder: Path, keep: int) -> None:
    dated = sorted(folder.glob(f"{PREFIX}*.xlsx"))  # the stamp sorts by time
    for old in dated[: max(0, len(dated) - keep)]:
        try:
            old.unlink()
        except OSError as exc:
            log.warning("could not remove old report %s: %s", old, exc)


def _fill(book: Book, engine: Engine, *, home: Path, now: datetime, chunk_rows: int, rules: DatasetOptions,
          thumbs: Thumbnails | None) -> int:
    """Every sheet, in the order a reader meets them; the Summary (first) is filled last."""
    with engine.connect() as conn, Session(conn) as s:
        counts = report_counts(s)
        status = status_summary(s, now)
        champ = champion(s)
        registered = list(s.scalars(select(ClassName.name).order_by(ClassName.position)))
        per_class = class_counts(s, book.low_confidence)
        runs = training_runs_with_models(s)
        reasons = quarantine_reasons(s)
        quality = label_quality(s, rules)

        summary_ws = book.sheet("Summary")
        preds = predictions_sheet(book, conn, chunk_rows, thumbs)
        dets = detections_sheet(book, conn, chunk_rows)
        order = _class_order(registered, quality.counts, per_class)
        classes = class_rows(order, set(registered), per_class, quality, dataset_balance(s))
        classes_sheet(book, classes)
        issues = label_events(s) + quality_issues(quality, rules.conflicts)
        label_issues_sheet(book, issues, order, quality.matrix(order), "same object")
        audit = audit_findings(s)
        label_health_sheet(book, audit, thumbs)
        class_overlap_sheet(book, audit)
        metric = primary_metric(champ, runs)
        figures = model_metrics(s)
        training_sheet(book, runs, champ, metric, attempts=training_attempts(s), figures=figures)
        model_quality_sheet(book, s)
        quarantine = quarantine_sheet(book, conn, chunk_rows, thumbs)
        corrections_sheet(book, s)

        items = _summary_items(book, now, counts, status, champ, metric) + correction_items(correction_figures(s))
        items += [("warning", w) for w in _warnings(status, counts, classes, issues, reasons, runs, book, rules)]
        items += [("warning", w) for w in gate_warnings([mv for _r, mv in runs if mv is not None][-1:])]
        items += [("warning", w) for w in health_warnings(audit)]
        items += [("note", n) for n in _paging_notes(preds, dets, quarantine)]
        write_dashboard(book, summary_ws, s, items=items, classes=classes, plots=_plots(home, champ),
                        champion=per_class_metrics(figures.get(champ.id) if champ else None))
    return preds.rows


def _class_order(registered: list[str], labelled: dict, predicted: dict) -> list[str]:
    """The user's classes in dataset order, then any other class seen (labels, then predictions), by name."""
    others = sorted((set(labelled) | set(predicted)) - set(registered), key=lambda c: (c not in labelled, c))
    return registered + others


def _summary_items(book: Book, now, counts: dict, status: dict, champ, metric: str | None) -> list[tuple]:
    tzname = now.astimezone(book.tz).tzname()
    items: list[tuple] = [("report written", now), ("period from", counts["first_prediction"]),
                          ("period to", counts["last_prediction"]), ("times shown in", tzname)]
    items += [(words, status.get(state, 0)) for state, words in STATE_WORDS.items() if state in status]
    items += [("duplicates", status["duplicates"]), ("near-duplicates (looks like)", status["near_duplicates"]),
              ("queue depth", status["queue_depth"]),
              ("images in this report", counts["predictions"]), ("boxes in this report", counts["detections"]),
              ("champion model", champ.version if champ else "none yet")]
    if champ is not None:
        items.append(("champion promoted", champ.promoted_at))
        metrics = scalar_metrics(champ.metrics)
        if metric in metrics:
            items.append((f"champion {metric}", metrics.pop(metric)))
        items += [(f"champion {k}", v) for k, v in metrics.items()]
        if champ.temperature is not None:
            items.append(("champion confidence calibration", f"expected calibration error {champ.ece_before:.3f} "
                          f"uncalibrated, {champ.ece_after:.3f} calibrated (temperature {champ.temperature:.2f})"))
    return items


def _warnings(status, counts, classes, issues, reasons, runs, book: Book, rules: DatasetOptions) -> list[str]:
    """What a person should act on, in plain words."""
    out = []
    if status["champion"] is None:
        out.append("No trained model is in use yet"
                   + (f"; {status['awaiting_model']} images wait for one." if status["awaiting_model"] else "."))
    if status["quarantined"]:
        top = ", ".join(f"{r} ({n})" for r, n in list(reasons.items())[:3])
        out.append(f"{status['quarantined']} files were quarantined, most for: {top}. See the Quarantine sheet.")
    low = sum(c["low_confidence"] for c in classes)
    if counts["predictions"] and low:
        out.append(f"{low} of {counts['predictions']} images ({low / counts['predictions']:.0%}) were classified "
                   f"with less than {book.low_confidence:.0%} confidence; check them in review/.")
    advice = ("Add labelled covers of it, or set training.balance: oversample." if rules.balance == "none" else
              "Add labelled covers of it (training.balance: oversample repeats them at most training.max_repeat "
              "times).")
    for c in classes:
        if c["warning"] and not c["warning"].startswith("not one of"):
            out.append(f"Class {c['class']}: {c['warning']}. {advice}")
    kinds = {}
    for i in issues:
        kinds[i["kind"]] = kinds.get(i["kind"], 0) + 1
    for kind in ("ambiguous_box", "conflicting_labels"):
        if kinds.get(kind):
            out.append(f"{kinds[kind]} label issues of kind {kind}: one cover given several classes. "
                       f"See the Label issues sheet.")
    left_out = sum(bool(i.get("excluded")) for i in issues)
    if left_out:
        out.append(f"{left_out} images are left out of training until their drops agree (training.conflicts: "
                   f"exclude): drop each again with the one of its classes you choose.")
    failed = [r for r, _mv in runs if r.state == "failed"]
    if failed:
        out.append(f"{len(failed)} training runs failed; the last said: {failed[-1].error or 'no message'}.")
    if status["oldest_waiting_seconds"] and status["oldest_waiting_seconds"] > 3600:
        out.append(f"A file has been waiting {status['oldest_waiting_seconds'] / 3600:.1f} hours.")
    return out


def _paging_notes(*tables) -> list[str]:
    return [f"{t.name} has {t.rows:,} rows, more than one Excel sheet holds: continued on "
            + ", ".join(t.sheets[1:]) + "." for t in tables if len(t.sheets) > 1]


def _plots(home: Path, champ) -> list[Path]:
    """The champion's confusion matrix and results plot, from its folder (models/<version>/weights/best.pt)."""
    if champ is None or not champ.path:
        return []
    weights = Path(champ.path)
    weights = weights if weights.is_absolute() else home / weights
    folder = weights.parent.parent if weights.parent.name == "weights" else weights.parent
    if weights.is_dir():
        folder = weights
    return [folder / name for name in PLOTS if (folder / name).is_file()]


def _shown(path: Path, home: Path) -> str:
    try:
        return path.resolve().relative_to(home.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())
