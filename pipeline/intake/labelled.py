"""Labelled drops, exactly once: pairs of image and label become Samples, everything else waits or is quarantined.

The same four phases as pipeline.intake.ingest, per batch, on the same intake path (pipeline.intake.core):
    A  register   one transaction: a `files` row per file (folder 'labeled'), claimed, cheap rejections decided
    B  decide     every live file of the touched folders is paired (pipeline.intake.pairing), images decoded, labels
                  parsed (pipeline.labels.formats); nothing is written meanwhile
    C  commit     one transaction: classes.txt names (`class_lists`), the registry, Samples and Labels (older
                  drops of the same image content marked `replaced_at`), final states and destinations
    D  move       files go to archive/labeled/<relpath> or quarantine/labeled/<relpath>
Files that wait for a partner stay where they are as `awaiting_partner` (the daemon's rescan skips them);
`expire_partners` decides for them once `pair_timeout` (or, for class folders in a classify home,
`class_folder_grace`) has passed. A classes.txt is processed on its own and
its names are kept per folder, so labels that arrive after it was archived still map their ids correctly.

Example:
    >>> ingest_labelled(engine, layout, home / "labeled", [home / "labeled/drop/a.jpg"], max_bytes=50 << 20,
    ...                 max_pixels=89_478_485, pair_timeout=30).waiting
    1
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

from sqlalchemy import func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pipeline.labels.classes import class_names
from pipeline.images.decode import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, decode_image
from pipeline.images.phash import perceptual_hash
from pipeline.errors import Rejected
from pipeline.intake.core import (BatchReport, Claim, Found, Layout, Registration, look_all, move, quarantine,
                                  register, transient)
from pipeline.labels.formats import DEFAULT_MAX_BOXES, ParsedLabel, class_name, normalise_name, parse_classes, parse_label
from pipeline.intake.pairing import CLASSES_FILE, ClassFolder, Member, Pair, Reject, Wait, folder_of, kind_of, plan_pairs
from pipeline.intake.corrections import read_workbook
from pipeline.intake.samples import Decisions, NewSample, commit_decisions
from pipeline.review.guard import WORKBOOK_EXTENSIONS
from pipeline.settings import ReviewOptions
from pipeline.inference.steps import read_file
from storage.clock import as_utc, utcnow
from storage.db import session_scope
from storage.names import shown
from storage.tables import ClassList, File, FileState

log = logging.getLogger(__name__)

FOLDER = "labeled"
DEFAULT_MAX_PIXELS = 89_478_485
_LIVE = (FileState.pending.value, FileState.awaiting_partner.value)
_ACCEPTED = IMAGE_EXTENSIONS | LABEL_EXTENSIONS | WORKBOOK_EXTENSIONS  # other spreadsheets: refused with a reason


def ingest_labelled(engine, layout: Layout, root: Path, paths: list[Path], *, max_bytes: int, max_pixels: int,
                    pair_timeout: float, class_folder_grace: float | None = None,
                    max_boxes: int = DEFAULT_MAX_BOXES, now: datetime | None = None,
                    claim: Claim = Claim(), review: ReviewOptions | None = None) -> BatchReport:
    """Take complete files under `root` (labeled/) to a processed, quarantined or awaiting_partner state.

    `class_folder_grace` (a classify home): images alone in a folder without label files are class-folder
    images as soon as the folder has been quiet this long; None (detect): only after `pair_timeout`.
    `review`: the task and review/ folder review workbooks' corrections need (None: classify, no copies).
    """
    report = BatchReport()
    seen = look_all(paths, root, max_bytes, report, allowed=_ACCEPTED, empty_ok=_may_be_empty)
    if not seen:
        return report
    try:
        with session_scope(engine, write=True) as s:
            register(s, layout, seen, claim, _Drop(FOLDER))
    except (OperationalError, OSError) as exc:
        return transient(report, [x.path for x in seen], "register", exc)
    folders = {folder_of(x.rel) for x in seen}
    cutoff, grace_cutoff = _cutoffs(now, pair_timeout, class_folder_grace)
    return _resolve(engine, layout, root, folders, report, max_pixels=max_pixels, cutoff=cutoff,
                    grace_cutoff=grace_cutoff, max_boxes=max_boxes, review=review)


def expire_partners(engine, layout: Layout, root: Path, *, pair_timeout: float, max_pixels: int = DEFAULT_MAX_PIXELS,
                    class_folder_grace: float | None = None, max_boxes: int = DEFAULT_MAX_BOXES,
                    now: datetime | None = None, review: ReviewOptions | None = None) -> BatchReport:
    """Decide for files that waited `pair_timeout` for a partner (class-folder image, or quarantine), and for
    images that waited `class_folder_grace` in a possible class folder."""
    cutoff, grace_cutoff = _cutoffs(now, pair_timeout, class_folder_grace)
    try:
        with session_scope(engine) as s:
            waiting = s.execute(select(File.source_path, File.created_at).where(
                File.folder == FOLDER, File.state == FileState.awaiting_partner.value, File.final_path.is_(None)))
            folders = {folder_of(p) for p, created in waiting if as_utc(created) <= cutoff or (
                grace_cutoff is not None and kind_of(p) == "image" and as_utc(created) <= grace_cutoff)}
    except OperationalError as exc:
        log.warning("cannot look for expired partners (%s); trying again soon", exc.orig)
        return BatchReport()
    if not folders:
        return BatchReport()
    return _resolve(engine, layout, root, folders, BatchReport(), max_pixels=max_pixels, cutoff=cutoff,
                    grace_cutoff=grace_cutoff, max_boxes=max_boxes, review=review)


def _cutoffs(now: datetime | None, pair_timeout: float, grace: float | None) -> tuple[datetime, datetime | None]:
    now = now or utcnow()
    cutoff = now - timedelta(seconds=pair_timeout)
    return cutoff, None if grace is None else now - timedelta(seconds=min(grace, pair_timeout))


# -- phase A ------------------------------------------------------------------------------------------------


def _may_be_empty(rel: str) -> bool:
    # An empty YOLO label is a background image; an empty classes.txt fails in its own parser.
    return kind_of(rel) in ("yolo", "classes")


class _Drop(Registration):
    """A labelled file left behind with the same content goes on; it waits for its partner where it did."""

    def carry_on(self, row: File, f: Found) -> bool:
        if row.sha256 != f.sha256:
            return False
        if f.rejected is not None:
            quarantine(row, f.rejected)
        elif row.state not in _LIVE:
            row.state, row.reason, row.detail = FileState.pending.value, None, None
        return True


# -- phase B ------------------------------------------------------------------------------------------------


def _resolve(engine, layout, root, folders, report, *, max_pixels, cutoff, grace_cutoff=None,
             max_boxes=DEFAULT_MAX_BOXES, review=None) -> BatchReport:
    try:
        with session_scope(engine) as s:
            members, locations, names, registered, class_folders = _load(s, root, folders)
            in_flight = _in_flight(s, root, folders) if grace_cutoff is not None else set()
    except OperationalError as exc:
        return transient(report, [], "loading the drop", exc)
    home = layout.home
    batch = Decisions(review=review)
    for m in (m for m in members if m.kind == "classes"):
        batch.classes.append((m, _read_classes(home / locations[m.row_id])))
    for m in (m for m in members if m.kind == "workbook"):
        _decide_workbook(m, home / locations[m.row_id], batch)
    for m, result in batch.classes:
        if isinstance(result, Rejected):
            names.pop(m.folder, None)  # a bad new classes.txt must not let labels fall back to an old one
        else:
            names[m.folder] = result
    jobs = plan_pairs([m for m in members if m.kind != "classes"], names_by_folder=names, cutoff=cutoff,
                      class_folder=class_folders.get, registered=registered, grace_cutoff=grace_cutoff,
                      in_flight=in_flight)
    for job in jobs:
        _decide(job, batch, home, locations, names, max_pixels, max_boxes)
    try:
        with session_scope(engine, write=True) as s:
            moving = commit_decisions(s, layout, batch, report)
    except (OperationalError, OSError) as exc:
        return transient(report, [home / locations[m.row_id] for m in members], "commit", exc)
    report.retry.extend(home / locations[m.row_id] for m in batch.retry)
    move(engine, home, moving)
    return report


def _load(s: Session, root: Path, folders: set[str]):
    rows = [r for r in s.scalars(select(File).where(
        File.folder == FOLDER, File.state.in_(_LIVE), File.final_path.is_(None), File.location.is_not(None)))
        if folder_of(r.source_path) in folders]
    members = [Member(r.id, r.source_path, as_utc(r.created_at)) for r in rows]
    names: dict[str, list[str]] = {}
    for cl in s.scalars(select(ClassList).where(ClassList.folder.in_(list(folders))).order_by(ClassList.id)):
        names[cl.folder] = list(cl.names)
    live_classes = {m.folder for m in members if m.kind == "classes"}
    for f in folders - live_classes:
        if os.path.lexists(root / f / CLASSES_FILE):  # a newer classes.txt is on its way: wait for it
            names.pop(f, None)
    class_folders = {f: _class_folder_name(s, root, f, f in names or f in live_classes) for f in folders}
    return members, {r.id: r.location for r in rows}, names, set(class_names(s)), class_folders


def _class_folder_name(s: Session, root: Path, folder: str, has_classes: bool) -> str | None:
    """The class a lone image in `folder` belongs to, when the folder has never held a label file."""
    if not folder or has_classes:
        return None
    try:
        with os.scandir(root / folder) as entries:
            if any(PurePosixPath(e.name).suffix.lower() in LABEL_EXTENSIONS for e in entries):
                return None
    except OSError:
        pass
    lower = func.lower(File.source_path)
    labelled = s.scalar(select(File.id).where(
        File.folder == FOLDER, File.source_path.startswith(folder + "/", autoescape=True),
        or_(lower.endswith(".txt"), lower.endswith(".xml"))).limit(1))
    # A class name is text for people: bytes of the folder name that are not UTF-8 become U+FFFD.
    return None if labelled is not None else normalise_name(shown(PurePosixPath(folder).name))


def _in_flight(s: Session, root: Path, folders: set[str]) -> set[str]:
    """Folders holding a file that has no row yet (still being copied, or not settled): not quiet."""
    known = set(s.scalars(select(File.source_path).where(
        File.folder == FOLDER, File.location.is_not(None), File.moved_at.is_(None))))
    busy = set()
    for folder in folders:
        try:
            with os.scandir(root / folder) as entries:
                names = [e.name for e in entries if not e.name.startswith(".") and not e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        if any(str(PurePosixPath(folder, n)) not in known for n in names):
            busy.add(folder)
    return busy


def _read_classes(path: Path) -> list[str] | Rejected:
    try:
        return parse_classes(read_file(path))
    except Rejected as exc:
        return exc


def _decide(job, batch: Decisions, home: Path, locations: dict, names: dict, max_pixels: int,
            max_boxes: int = DEFAULT_MAX_BOXES) -> None:
    if isinstance(job, Wait):
        batch.waiting.append((job.member, job.detail))
    elif isinstance(job, Reject):
        batch.final.append((job.member, job.code, job.detail))
    else:
        image = job.image
        try:
            size, phash = _decode(home / locations[image.row_id], max_pixels)
            if isinstance(job, ClassFolder):
                name = class_name(job.class_name, f"class folder {image.folder}:")
                batch.samples.append(NewSample(image, None, "folder", *size, ParsedLabel(), name, phash))
            else:
                _decide_pair(job, size, phash, batch, home, locations, names, max_boxes)
        except FileNotFoundError as exc:
            gone = image if exc.filename == str(home / locations[image.row_id]) else job.label
            batch.vanished.append(gone)
            batch.waiting.extend((m, "waiting for its partner") for m in (image, getattr(job, "label", None))
                                 if m is not None and m is not gone)
        except OSError as exc:
            log.warning("%s: cannot read (%s); will retry", image.source_path, exc.strerror)
            batch.retry.extend(m for m in (image, getattr(job, "label", None)) if m is not None)
        except Rejected as exc:  # the image itself is bad
            batch.final.append((image, exc.code, str(exc)))
            if isinstance(job, Pair):
                batch.final.append((job.label, "image_rejected", f"{image.source_path}: {exc.code}"))


def _decide_pair(job: Pair, size, phash: int | None, batch: Decisions, home: Path, locations: dict, names: dict,
                 max_boxes: int) -> None:
    kind = job.label.kind
    try:
        parsed = parse_label(read_file(home / locations[job.label.row_id]), kind,
                             names=names.get(job.label.folder), image_size=size, max_boxes=max_boxes)
    except Rejected as exc:
        batch.final.append((job.label, exc.code, str(exc)))
        batch.final.append((job.image, "label_rejected", f"{job.label.source_path}: {exc.code}: {exc}"))
        return
    batch.samples.append(NewSample(job.image, job.label, kind, *size, parsed, phash=phash))


def _decide_workbook(m: Member, path: Path, batch: Decisions) -> None:
    try:
        result = read_workbook(path)
    except FileNotFoundError:
        batch.vanished.append(m)
    except OSError as exc:
        log.warning("%s: cannot read (%s); will retry", m.source_path, exc.strerror)
        batch.retry.append(m)
    else:
        if isinstance(result, Rejected):
            batch.final.append((m, result.code, str(result)))
        else:
            batch.workbooks.append((m, result))


def _decode(path: Path, max_pixels: int) -> tuple[tuple[int, int], int | None]:
    """The image's size and perceptual hash, from its one decode."""
    img = decode_image(read_file(path), max_pixels=max_pixels)
    return (img.width, img.height), perceptual_hash(img.rgb)
