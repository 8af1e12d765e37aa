"""The managed YOLO dataset: immutable snapshots, switched by atomically replacing one file, data.yaml.

    dataset/
      data.yaml        path: <home>/dataset/v000012   <- what a training run reads; replaced with os.replace
      current          -> v000012 (a symlink, for people browsing)
      v000012/         never changed once built: images/{train,val}, labels/{train,val}, data.yaml (relative,
                       self-contained), train.txt when training.balance is oversample (each image as
                       often as it repeats; pipeline.training.trainer turns the repeats into class-folder links for
                       classify)
      v000011/         retired: kept a day after it stopped being current, for runs still reading it

Why snapshots rather than building beside `dataset/` and swapping folders with renames: a training run reads
data.yaml once and then opens images and labels for hours. Renaming folders under it would pull files from
under a running job, and two renames are never one atomic step. A snapshot is built whole in a hidden folder,
renamed into place, and only then named by data.yaml, so a run sees the old dataset or the new one, never a mix,
and keeps its own to the end. Images are hard links into archive/ (copies across file systems), so a snapshot
costs only its label files. The split is by content hash, so the same picture always lands in the same split;
near-duplicates (watch.near_duplicate_bits) are one group, split by the hash of the group's first image, so
two photos of one cover never straddle train and val.

Example:
    >>> build = build_dataset(engine, home, home / "dataset", options)   # pipeline.settings.DatasetOptions
    >>> build.path.name, build.train_images, build.quality.ratio
    ('v000003', 40, 2.5)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from sqlalchemy import select, update

from pipeline.labels.classes import class_names
from pipeline.errors import DatasetError
from pipeline.labels.formats import WHOLE_IMAGE, Box, is_class_name
from pipeline.images.phash import from_db
from pipeline.labels.quality import (Balance, LabelledImage, Quality, assess_labels, near_groups, plan_oversampling,
                                     unsettled)
from pipeline.settings import DatasetOptions
from storage.db import session_scope
from storage.files import fsync_dir, write_atomically
from storage.names import portable
from storage.tables import DatasetVersion, File, Label, Sample

log = logging.getLogger(__name__)

SNAPSHOT = re.compile(r"v\d{6}")


def split_of(sha256: str, val_fraction: float) -> str:
    """train or val, from the image content alone: stable across restarts, re-drops and renames."""
    return "val" if int(sha256[:12], 16) / 16**12 < val_fraction else "train"


@dataclass
class _Item:
    sha: str
    file_name: str  # in the snapshot: original stem + content hash, so names never clash
    source: Path
    split: str
    boxes: list[Box] = field(default_factory=list)
    moved_to: Path | None = None  # its committed destination: where it is once a worker has moved it


@dataclass
class DatasetBuild:
    version: int
    path: Path  # the snapshot folder
    train_images: int
    val_images: int
    train_entries: int
    boxes: int
    quality: Quality
    balance: Balance | None
    excluded: list[str] = field(default_factory=list)  # image keys left out: their drops disagree


def build_dataset(engine, home: Path, dataset_dir: Path, options: DatasetOptions, *, retain_seconds: float = 86400.0,
                  keep: int = 3) -> DatasetBuild | None:
    """Build a new snapshot from the current labels and switch to it; None when nothing changed (or no labels).

    `options.conflicts`: "exclude" leaves out images whose drops gave different classes until a drop confirms
    one (`quality.unsettled`); "latest" trains them with their last drop's labels.
    """
    with session_scope(engine) as s:
        names = class_names(s)
        items, history = _load(s, home, options)
    quality = assess_labels(history, names=names, iou_threshold=options.ambiguity_iou,
                            warn_ratio=options.imbalance_warn_ratio, balance=options.balance,
                            near_bits=options.near_duplicate_bits)
    left_out = unsettled(quality) if options.conflicts == "exclude" else set()
    excluded = sorted(left_out)
    items = [i for i in items if i.sha not in left_out]
    if not items:
        return None
    train = [(i.sha, [b.class_name for b in i.boxes]) for i in items if i.split == "train"]
    oversampling = options.balance == "oversample"
    plan = plan_oversampling(train, max_repeat=options.max_repeat if oversampling else 1)
    fingerprint = _fingerprint(names, items, plan if oversampling else None)
    with session_scope(engine) as s:
        last = s.scalar(select(DatasetVersion).order_by(DatasetVersion.id.desc()).limit(1))
        current = _current(dataset_dir)
        if last is not None and last.fingerprint == fingerprint and current and current == (home / last.path).resolve():
            return None
    tmp = dataset_dir / f".build-{uuid.uuid4().hex[:12]}"
    try:
        _write_snapshot(tmp, items, names, plan if oversampling else None)
        build = _switch(engine, home, dataset_dir, tmp, items, names, quality, plan, oversampling, excluded,
                        fingerprint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only still there when the build failed
    _retire(dataset_dir, build.path, retain_seconds, keep)
    _log_findings(build, quality, excluded)
    return build


def _log_findings(build: DatasetBuild, quality, excluded: list[str]) -> None:
    for warning in filter(None, [quality.warning, *_split_warnings(build)]):
        log.warning("dataset v%06d: %s", build.version, warning)
    if quality.overlaps or quality.conflicts:
        log.warning("dataset v%06d: %d boxes with two classes on one object, %d images labelled differently in "
                    "different drops", build.version, len(quality.overlaps), len(quality.conflicts))
    if excluded:
        log.warning("dataset v%06d: %d images left out of training until their drops agree "
                    "(training.conflicts: exclude; see the report's Label issues)", build.version, len(excluded))


def export_dataset(dataset_dir: Path, dest: Path) -> Path:
    """Copy the current snapshot to `dest` (absent or empty), self-contained: `yolo train data=DEST/data.yaml`."""
    snapshot = _current(dataset_dir)
    if snapshot is None or not snapshot.is_dir():
        raise DatasetError("no_dataset", f"{dataset_dir}: no dataset built yet; drop labelled images into labeled/")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError("export_exists", f"{dest}: exists and is not an empty folder")
    tmp = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:8]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(snapshot, tmp, ignore=shutil.ignore_patterns("*.cache", ".retired"))
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- reading ------------------------------------------------------------------------------------------------


def label_history(s) -> list[LabelledImage]:
    """Every drop of every labelled image, replaced ones too: what `assess_labels` judges, for the dataset build
    and the report alike."""
    return [im for im, _sample, _image in _drops(s)]


def _drops(s):
    rows = s.execute(select(Sample, File).join(File, File.id == Sample.image_file_id).order_by(Sample.id)).all()
    boxes: dict[int, list[Box]] = {}
    for lab in s.scalars(select(Label).order_by(Label.id)):
        xywh = WHOLE_IMAGE if lab.cx is None else (lab.cx, lab.cy, lab.w, lab.h)
        boxes.setdefault(lab.file_id, []).append(Box(lab.class_name, *xywh))
    return [(LabelledImage(sample.image_sha256, sample.id, image.original_name, tuple(boxes.get(image.id, [])),
                           sample.replaced_at is None, None if image.phash is None else from_db(image.phash)),
             sample, image) for sample, image in rows]


def _load(s, home: Path, options: DatasetOptions) -> tuple[list[_Item], list[LabelledImage]]:
    items, history = [], []
    for im, sample, image in _drops(s):
        mine = list(im.boxes)
        history.append(im)
        if sample.replaced_at is not None:
            continue
        if not all(is_class_name(b.class_name) for b in mine):  # recorded before names were validated
            log.warning("%s: a class name is not a valid name (%s); left out of the dataset", image.original_name,
                        sorted({b.class_name[:100] for b in mine if not is_class_name(b.class_name)}))
            continue
        if image.location is None:
            log.warning("%s: the labelled image is gone from %s; left out of the dataset", image.original_name,
                        image.final_path)
            continue
        items.append(_Item(sample.image_sha256, _snapshot_name(image.original_name, sample.image_sha256),
                           home / image.location, "", mine,
                           home / image.final_path if image.final_path not in (None, image.location) else None))
    anchor = near_groups(history, options.near_duplicate_bits)
    for it in items:  # near-duplicates take the split of their group's first image
        it.split = split_of(anchor.get(it.sha, it.sha), options.val_fraction)
    return items, history


def _snapshot_name(original: str, sha: str) -> str:
    p = Path(portable(original))  # a name that is not UTF-8: %XX, as in the archive
    stem = p.stem.encode()[:120].decode(errors="ignore")  # room for the hash within NAME_MAX
    return f"{stem}_{sha[:12]}{p.suffix.lower()}"


def _fingerprint(names: list[str], items: list[_Item], plan: Balance | None) -> str:
    body = [names, [(i.sha, i.file_name, i.split, [tuple(asdict(b).values()) for b in i.boxes])
                    for i in sorted(items, key=lambda i: i.sha)], plan.repeats if plan else None]
    return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _current(dataset_dir: Path) -> Path | None:
    """The snapshot the live data.yaml names."""
    try:
        data = yaml.safe_load((dataset_dir / "data.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return Path(data["path"]) if isinstance(data, dict) and data.get("path") else None


# -- writing ------------------------------------------------------------------------------------------------


def _write_snapshot(tmp: Path, items: list[_Item], names: list[str], plan: Balance | None) -> None:
    for sub in ("images/train", "images/val", "labels/train", "labels/val"):
        (tmp / sub).mkdir(parents=True)
    position = {n: i for i, n in enumerate(names)}
    for it in items:
        try:
            _link(it.source, tmp / "images" / it.split / it.file_name)
        except FileNotFoundError:
            if it.moved_to is None:
                raise
            # Read before another worker moved it (a move links the new name before it drops the old one).
            _link(it.moved_to, tmp / "images" / it.split / it.file_name)
        lines = "".join(f"{position[b.class_name]} {b.cx:.6f} {b.cy:.6f} {b.w:.6f} {b.h:.6f}\n" for b in it.boxes)
        (tmp / "labels" / it.split / f"{Path(it.file_name).stem}.txt").write_text(lines, encoding="utf-8")
    train = "images/train"
    if plan is not None:
        # Ultralytics resolves "./" lines against the list's own folder, so the snapshot stays relocatable.
        entries = [f"./images/train/{i.file_name}\n" * plan.repeats.get(i.sha, 1) for i in items if i.split == "train"]
        (tmp / "train.txt").write_text("".join(entries), encoding="utf-8")
        train = "train.txt"
    (tmp / "data.yaml").write_text(data_yaml(names, train), encoding="utf-8")


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # another file system, or links not allowed: a copy is as good, only bigger
        shutil.copy2(src, dst, follow_symlinks=False)


def data_yaml(names: list[str], train: str, path: Path | None = None) -> str:
    """A YOLO data.yaml; without `path`, Ultralytics resolves the folders against the file's own folder."""
    data: dict = {"path": str(path)} if path is not None else {}
    data.update(train=train, val="images/val", nc=len(names), names=dict(enumerate(names)))
    return "# written by coverwatch: the class ids are the registry's order\n" + yaml.safe_dump(
        data, allow_unicode=True, sort_keys=False)


def _switch(engine, home, dataset_dir, tmp, items, names, quality, plan: Balance, oversample: bool, excluded,
            fingerprint) -> DatasetBuild:
    """Name the snapshot, record it, and make data.yaml point at it: the one atomic step a reader can see.

    The per-class training counts before and after oversampling are recorded either way (equal without it).
    """
    train = [i for i in items if i.split == "train"]
    with session_scope(engine) as s:
        _record_splits(s, items)
        v = DatasetVersion(path="", fingerprint=fingerprint, classes=names, train_images=len(train),
                           val_images=len(items) - len(train), boxes=sum(len(i.boxes) for i in items),
                           train_entries=sum(plan.repeats.get(i.sha, 1) for i in train),
                           stats={"quality": quality.as_dict(),
                                  "balance": {"method": "oversample" if oversample else "none", **asdict(plan)},
                                  "excluded": excluded})
        s.add(v)
        s.flush()
        final = dataset_dir / f"v{v.id:06d}"
        v.path = os.path.relpath(final, home)
        os.rename(tmp, final)
        fsync_dir(dataset_dir)
        write_atomically(dataset_dir / "data.yaml",
                         data_yaml(names, "train.txt" if oversample else "images/train", final), durable=True)
        _point_current(dataset_dir, final.name)
        build = DatasetBuild(v.id, final, v.train_images, v.val_images, v.train_entries, v.boxes, quality,
                             plan if oversample else None, list(excluded))
    log.info("dataset v%06d: %d train (%d entries), %d val images, %d boxes, %d classes", build.version,
             build.train_images, build.train_entries, build.val_images, build.boxes, len(names))
    if oversample:
        log.info("dataset v%06d: oversample (at most %dx): %s", build.version, plan.max_repeat, plan.summary(names))
    return build


def _record_splits(s, items: list[_Item]) -> None:
    for split in ("train", "val"):
        shas = [i.sha for i in items if i.split == split]
        for k in range(0, len(shas), 500):
            chunk = shas[k:k + 500]
            s.execute(update(Sample).where(Sample.image_sha256.in_(chunk), Sample.replaced_at.is_(None))
                      .values(split=split))
            s.execute(update(Label).where(Label.image_sha256.in_(chunk), Label.replaced_at.is_(None))
                      .values(split=split))


def _point_current(dataset_dir: Path, target: str) -> None:
    tmp = dataset_dir / ".current.tmp"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, dataset_dir / "current")
    except OSError as exc:  # some network shares have no symlinks; data.yaml is what matters
        log.debug("cannot point dataset/current at %s (%s)", target, exc)


def _retire(dataset_dir: Path, current: Path, retain_seconds: float, keep: int) -> None:
    """Mark snapshots no longer current; delete those retired long enough, beyond the newest `keep`."""
    snapshots = sorted(p for p in dataset_dir.iterdir() if SNAPSHOT.fullmatch(p.name) and p.is_dir())
    now = time.time()
    for p in snapshots:
        marker = p / ".retired"
        if p == current:
            continue
        if not marker.exists():
            marker.touch()
        elif p not in snapshots[-keep:] and now - marker.stat().st_mtime > retain_seconds:
            shutil.rmtree(p, ignore_errors=True)
    for p in dataset_dir.glob(".build-*"):  # a build a crash interrupted
        if now - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)


def _split_warnings(build: DatasetBuild) -> list[str]:
    if build.val_images == 0:
        return ["the val split is empty (too few images for training.val_fraction); training needs some"]
    if build.train_images == 0:
        return ["the train split is empty; training needs some images"]
    return []
