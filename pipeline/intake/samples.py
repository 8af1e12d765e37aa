"""Phase C of a labelled drop: write what pipeline.intake.labelled decided, in the caller's one transaction.

classes.txt names go to `class_lists` and the registry; each accepted image becomes a Sample with its Label rows;
files get their final state and a destination (archive/labeled/... or quarantine/labeled/...) before any move.

A re-drop of the same image content (by SHA-256) replaces the older Sample and Labels (`replaced_at`); the change
is a `relabelled` LabelEvent with the classes before and after, so the report can show who changed what.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.labels.classes import register_classes
from pipeline.errors import Rejected
from pipeline.intake.core import BatchReport, Layout, assign_destinations, vanish
from pipeline.intake.corrections import record_corrections
from pipeline.intake.near import record_hash
from pipeline.labels.formats import ParsedLabel
from pipeline.intake.pairing import Member
from pipeline.review.layout import SOURCE_FORMAT
from pipeline.review.read import ReviewRows
from pipeline.settings import ReviewOptions
from storage.tables import ClassList, File, FileState, Label, LabelEvent, Sample

log = logging.getLogger(__name__)

FOLDER = "labeled"
_LIVE = (FileState.pending.value, FileState.awaiting_partner.value)


@dataclass
class NewSample:
    """An image with its validated label, ready to record."""

    image: Member
    label: Member | None
    fmt: str  # yolo | voc | folder
    width: int
    height: int
    parsed: ParsedLabel
    whole_image_class: str | None = None
    phash: int | None = None  # of the decoded image (pipeline.images.phash); None: a flat image


@dataclass
class Decisions:
    """What pipeline.intake.labelled decided for one batch; `commit_decisions` writes it."""

    classes: list[tuple[Member, list[str] | Rejected]] = field(default_factory=list)
    samples: list[NewSample] = field(default_factory=list)
    final: list[tuple[Member, str | None, str]] = field(default_factory=list)  # code None: processed
    waiting: list[tuple[Member, str]] = field(default_factory=list)
    retry: list[Member] = field(default_factory=list)
    vanished: list[Member] = field(default_factory=list)
    workbooks: list[tuple[Member, ReviewRows]] = field(default_factory=list)  # review workbooks, read
    review: ReviewOptions | None = None  # what their corrections need (pipeline.intake.corrections)


def commit_decisions(s: Session, layout: Layout, batch: Decisions, report: BatchReport) -> list[int]:
    """Write what was decided; return the ids of rows whose files now move to their committed destination."""
    members = [m for m, _ in batch.classes] + [m for m, *_ in batch.final + batch.waiting] + batch.vanished
    members += [m for x in batch.samples for m in (x.image, x.label) if m is not None]
    members += [m for m, _ in batch.workbooks]
    ids = [m.row_id for m in members]
    # Also rows rejected at registration: they need their destination. Locked, in one order: another worker
    # deciding the same folder waits, then finds these rows decided (final_path set) and leaves them.
    rows = {r.id: r for r in s.scalars(select(File).where(
        File.folder == FOLDER, File.final_path.is_(None), File.moved_at.is_(None), File.location.is_not(None),
        File.id.in_(ids) | (File.state == FileState.quarantined.value)).order_by(File.id).with_for_update())}
    now = datetime.now(timezone.utc)
    for row in rows.values():
        row.claimed_by = row.claim_expires_at = None  # decided here, whoever registered it
    finals: list[File] = [r for r in rows.values() if r.state == FileState.quarantined.value]
    finals += _record_classes(s, batch, rows)
    for sample in batch.samples:
        image, label = rows.get(sample.image.row_id), sample.label and rows.get(sample.label.row_id)
        if image is None or (sample.label is not None and label is None):
            continue  # another worker decided these meanwhile
        _record_sample(s, sample, image, label, now)
        finals += [r for r in (image, label) if r is not None]
    finals += _record_workbooks(s, layout, batch, rows, now)
    for m, code, detail in batch.final:
        if (row := rows.get(m.row_id)) is not None:
            _set_final(row, code, detail)
            finals.append(row)
    for m, detail in batch.waiting:
        if (row := rows.get(m.row_id)) is not None and row.state in _LIVE:
            row.state, row.detail = FileState.awaiting_partner.value, detail
            report.waiting += 1
    for m in batch.vanished:
        if (row := rows.get(m.row_id)) is not None:
            vanish(row, now)
    assign_destinations(s, layout, FOLDER, finals, now)
    _count(finals, report)
    return [r.id for r in finals]


def _record_classes(s: Session, batch: Decisions, rows: dict[int, File]) -> list[File]:
    out = []
    for m, result in batch.classes:
        if (row := rows.get(m.row_id)) is None:
            continue
        if isinstance(result, Rejected):
            _set_final(row, result.code, str(result))
        else:
            s.add(ClassList(file_id=row.id, folder=m.folder, names=result))
            register_classes(s, result, file_id=row.id)
            _set_final(row, None, f"{len(result)} class names")
        out.append(row)
    return out


def _record_workbooks(s: Session, layout: Layout, batch: Decisions, rows: dict[int, File], now) -> list[File]:
    """Each review workbook's rows (pipeline.intake.corrections); the labels they make are Samples like any drop's."""
    out = []
    for m, read in batch.workbooks:
        if (row := rows.get(m.row_id)) is None:
            continue
        for x in record_corrections(s, layout.home, row, read, batch.review, now):
            member = Member(x.image.id, x.image.source_path, now)
            _record_sample(s, NewSample(member, None, SOURCE_FORMAT, x.width, x.height, ParsedLabel(), x.class_name),
                           x.image, None, now)
        out.append(row)
    return out


def _count(finals: list[File], report: BatchReport) -> None:
    for row in finals:
        if row.state == FileState.processed.value:
            report.processed += 1
            log.info("labelled: %s", row.source_path)
        else:
            report.quarantined += 1
            log.warning("quarantined %s: %s (%s)", row.source_path, row.reason, row.detail)


def _record_sample(s: Session, x: NewSample, image: File, label: File | None, now: datetime) -> None:
    used = [b.class_name for b in x.parsed.boxes] or ([x.whole_image_class] if x.whole_image_class else [])
    register_classes(s, list(dict.fromkeys(used)), file_id=image.id)
    record_hash(image, x.phash)  # the dataset build groups near-duplicates by it
    _replace_older(s, image, used, now)
    s.add(Sample(image_file_id=image.id, label_file_id=label.id if label else None, image_sha256=image.sha256,
                 source_format=x.fmt, width=x.width, height=x.height,
                 boxes=len(x.parsed.boxes) or int(x.whole_image_class is not None)))
    if x.whole_image_class:
        s.add(Label(file_id=image.id, image_sha256=image.sha256, class_name=x.whole_image_class,
                    source_format=x.fmt))
    s.add_all(Label(file_id=image.id, image_sha256=image.sha256, class_name=b.class_name, cx=b.cx, cy=b.cy,
                    w=b.w, h=b.h, source_format=x.fmt) for b in x.parsed.boxes)
    notes = [f"class {x.whole_image_class}" if x.whole_image_class else f"{len(x.parsed.boxes)} boxes"]
    if x.parsed.duplicates:
        notes.append(f"{x.parsed.duplicates} duplicate lines dropped")
        log.warning("%s: %d exact duplicate label lines dropped", label.source_path, x.parsed.duplicates)
        s.add(LabelEvent(kind="duplicate_lines", file_id=label.id, image_sha256=image.sha256,
                         detail=f"{x.parsed.duplicates} exact duplicate lines dropped",
                         data={"dropped": x.parsed.duplicates}))
    if x.parsed.clipped:
        notes.append(f"{x.parsed.clipped} boxes clipped to the image edge")
    _set_final(image, None, "; ".join(notes))
    if label is not None:
        _set_final(label, None, "; ".join(notes))
    s.flush()


def _replace_older(s: Session, image: File, used: list[str], now: datetime) -> None:
    """The same image content dropped again: its new labels replace the old ones, and the change is recorded."""
    older = list(s.scalars(select(Sample).where(Sample.image_sha256 == image.sha256, Sample.replaced_at.is_(None))))
    if not older:
        return
    before = sorted(s.scalars(select(Label.class_name).where(
        Label.file_id.in_([o.image_file_id for o in older]), Label.replaced_at.is_(None))))
    for o in older:
        o.replaced_at = now
    s.execute(update(Label).where(Label.file_id.in_([o.image_file_id for o in older]),
                                  Label.replaced_at.is_(None)).values(replaced_at=now))
    after = sorted(used)
    detail = f"{image.source_path} re-labelled: {before} -> {after}"
    log.info("%s", detail)
    s.add(LabelEvent(kind="relabelled", file_id=image.id, image_sha256=image.sha256, detail=detail,
                     data={"before": before, "after": after, "replaced_files": [o.image_file_id for o in older],
                           "changed": before != after}))


def _set_final(row: File, code: str | None, detail: str) -> None:
    row.state = FileState.processed.value if code is None else FileState.quarantined.value
    row.reason, row.detail = code, detail or None
