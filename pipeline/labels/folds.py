"""K folds over a dataset snapshot, for the label audit: every labelled image in exactly one fold, and one image
content (or, later, one group of near-duplicates) never in two.

    >>> items = snapshot_items(Path("dataset/v000012"))        # train and val alike: every labelled image
    >>> folds = assign_folds(items, 3)                          # one content (sha256) -> one fold, 0..2
    >>> write_fold(Path("models/audit-0008/fold1/data"), items, folds, held_out=0, names=names)

A fold's data folder is a small snapshot of the same layout (images/{train,val}, labels/{train,val},
data.yaml): the other folds' images train, the held-out fold is "val", so the trainer reads it as it reads the
managed dataset. Images are symbolic links into the snapshot; nothing is copied but the label lines.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.labels.dataset import data_yaml
from storage.files import file_sha256


@dataclass(frozen=True)
class AuditItem:
    """One labelled image of a snapshot, as the classify task sees it: its first label line's class."""

    sha256: str  # of the image's bytes
    image: Path  # in the snapshot
    label: str  # the label file's text, as the snapshot has it
    class_id: int


def snapshot_items(snapshot: Path) -> list[AuditItem]:
    """Every image of both splits that has a label line (the classify view takes the first line's class)."""
    items = []
    for split in ("train", "val"):
        for label in sorted((snapshot / "labels" / split).glob("*.txt")):
            text = label.read_text(encoding="utf-8")
            first = text.split()
            images = sorted((snapshot / "images" / split).glob(f"{label.stem}.*"))
            if not first or not images:
                continue
            items.append(AuditItem(file_sha256(images[0]), images[0], text, int(first[0])))
    return items


def snapshot_names(snapshot: Path) -> list[str]:
    names = yaml.safe_load((snapshot / "data.yaml").read_text(encoding="utf-8"))["names"]
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def assign_folds(items: Sequence[AuditItem], k: int, *,
                 group_key: Callable[[AuditItem], str] = lambda item: item.sha256) -> list[int]:
    """The fold (0..k-1) of each item: items sharing a `group_key` share a fold, and each class is dealt
    round-robin across the folds so every fold sees every class it can.

    The default key is the image content; pass a near-duplicate group id to keep look-alikes together. Groups
    are ordered by a hash of their key, so the assignment is stable across runs and does not follow names.
    """
    if k < 2:
        raise ValueError("k-fold needs at least 2 folds")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(group_key(item), []).append(i)
    by_class: dict[int, list[str]] = {}
    for key, members in groups.items():
        majority = max({items[i].class_id for i in members}, key=[items[i].class_id for i in members].count)
        by_class.setdefault(majority, []).append(key)
    fold_of_group: dict[str, int] = {}
    load = [0] * k  # images per fold, all classes
    for cls in sorted(by_class):
        mine = [0] * k  # this class's images per fold: its next group goes where it has fewest, then fewest in all
        for key in sorted(by_class[cls], key=lambda g: hashlib.sha256(g.encode()).hexdigest()):
            fold = min(range(k), key=lambda f: (mine[f], load[f], f))
            fold_of_group[key] = fold
            mine[fold] += len(groups[key])
            load[fold] += len(groups[key])
    return [fold_of_group[group_key(item)] for item in items]


def write_fold(dest: Path, items: Sequence[AuditItem], folds: Sequence[int], *, held_out: int,
               names: list[str]) -> Path:
    """The data folder of one fold: `held_out`'s images as val, all others as train; returns its data.yaml."""
    for sub in ("images/train", "images/val", "labels/train", "labels/val"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for item, fold in zip(items, folds):
        split = "val" if fold == held_out else "train"
        link = dest / "images" / split / item.image.name
        if not os.path.lexists(link):
            os.symlink(item.image.resolve(), link)
        (dest / "labels" / split / f"{item.image.stem}.txt").write_text(item.label, encoding="utf-8")
    (dest / "data.yaml").write_text(data_yaml(names, "images/train"), encoding="utf-8")
    return dest / "data.yaml"


