"""Which files of a labelled drop belong together, and what to do with each: pure decisions, no I/O.

Image and label pair by folder and stem (`drop/a.jpg` + `drop/a.txt` or `drop/a.xml`), in either arrival order.
A YOLO pair also needs its folder's classes.txt. An image alone in a folder that has never held a label file
is a class-folder image (`labeled/<class name>/a.jpg`): taken at once when that class is already registered;
in a classify home (`grace_cutoff` given) once its folder is quiet: nothing registered there after the cutoff
and no file on disk still unregistered (`in_flight`), so a labelImg drop copied images first still pairs;
otherwise after the pair timeout (a label may still be on its way). Everything else waits, and once its wait
is over goes to quarantine with `missing_label`, `orphan_label` or `missing_classes`.

Example:
    >>> plan_pairs([img, txt], names_by_folder={"drop": ["만화"]}, cutoff=now - timeout,
    ...            class_folder=lambda folder: None, registered=set())
    [Pair(image=img, label=txt)]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from pipeline.images.decode import IMAGE_EXTENSIONS
from pipeline.review.guard import WORKBOOK_EXTENSIONS

CLASSES_FILE = "classes.txt"


def kind_of(source_path: str) -> str:
    """image | yolo | voc | classes | workbook (a review workbook, or another spreadsheet), from the name alone."""
    p = PurePosixPath(source_path)
    if p.name.lower() == CLASSES_FILE:
        return "classes"
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in WORKBOOK_EXTENSIONS:
        return "workbook"
    return {".txt": "yolo", ".xml": "voc"}.get(suffix, "other")


def folder_of(source_path: str) -> str:
    parent = PurePosixPath(source_path).parent.as_posix()
    return "" if parent == "." else parent


@dataclass(frozen=True, slots=True)
class Member:
    """A live file row of the labelled folder."""

    row_id: int
    source_path: str  # relative to labeled/
    created_at: datetime  # aware UTC: when it was registered, i.e. complete

    @property
    def kind(self) -> str:
        return kind_of(self.source_path)

    @property
    def folder(self) -> str:
        return folder_of(self.source_path)


@dataclass(frozen=True, slots=True)
class Pair:
    image: Member
    label: Member


@dataclass(frozen=True, slots=True)
class ClassFolder:
    image: Member
    class_name: str


@dataclass(frozen=True, slots=True)
class Reject:
    member: Member
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Wait:
    member: Member
    detail: str


Job = Pair | ClassFolder | Reject | Wait


def plan_pairs(members: list[Member], *, names_by_folder: dict[str, list[str]], cutoff: datetime,
               class_folder: Callable[[str], str | None], registered: set[str],
               grace_cutoff: datetime | None = None, in_flight: Collection[str] = ()) -> list[Job]:
    """Decide for every image and label member (classes.txt members are handled before this)."""
    groups: dict[tuple[str, str], list[Member]] = defaultdict(list)
    newest: dict[str, datetime] = {}
    for m in members:
        newest[m.folder] = max(newest.get(m.folder, m.created_at), m.created_at)
        if m.kind in ("image", "yolo", "voc"):
            groups[(m.folder, PurePosixPath(m.source_path).stem)].append(m)
    quiet = set() if grace_cutoff is None else {f for f, t in newest.items()
                                                if t <= grace_cutoff and f not in in_flight}
    jobs: list[Job] = []
    for (folder, _stem), group in sorted(groups.items()):
        at_once = registered | ({name} if folder in quiet and (name := class_folder(folder)) else set())
        jobs.extend(_plan_group(group, folder, names_by_folder.get(folder), cutoff, class_folder, at_once))
    return jobs


def _plan_group(group, folder, names, cutoff, class_folder, at_once) -> list[Job]:
    images = sorted((m for m in group if m.kind == "image"), key=lambda m: m.source_path)
    labels = sorted((m for m in group if m.kind != "image"), key=lambda m: m.source_path)
    jobs: list[Job] = []
    rest = images + labels
    if images and labels:
        image, label, rest = images[0], labels[0], images[1:] + labels[1:]
        if label.kind == "yolo" and names is None:
            where = f"{folder or 'labeled'}/{CLASSES_FILE}"
            if min(image.created_at, label.created_at) <= cutoff:
                jobs += [Reject(m, "missing_classes", f"no {where} arrived") for m in (image, label)]
            else:
                jobs += [Wait(m, f"waiting for {where}") for m in (image, label)]
        else:
            jobs.append(Pair(image, label))
    for m in rest:
        jobs.append(_alone(m, folder, cutoff, class_folder, at_once))
    return jobs


def _alone(m: Member, folder: str, cutoff, class_folder, at_once: set[str]) -> Job:
    """`at_once`: the class names whose class-folder images need not wait for the pair timeout."""
    expired = m.created_at <= cutoff
    if m.kind == "image":
        name = class_folder(folder)
        if name is not None and (expired or name in at_once):
            return ClassFolder(m, name)
        if expired:
            return Reject(m, "missing_label", "no .txt or .xml label with the same name arrived")
        return Wait(m, "waiting for its label")
    if expired:
        return Reject(m, "orphan_label", "no image with the same name arrived")
    return Wait(m, "waiting for its image")
