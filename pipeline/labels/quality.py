"""What is wrong with the labels as a whole: ambiguous classes and imbalance. Pure functions on plain data.

The user's two labelling problems, measured instead of repeated:
- ambiguity: boxes of different classes on the same object (IoU above a threshold) in one drop, the same
  image content labelled with different classes in different drops, and near-duplicates (the same cover
  photographed twice: perceptual hashes at most `near_bits` apart) labelled with different classes. All feed a
  class co-occurrence matrix: which classes people use for the same objects, i.e. which to merge or define
  more sharply.
- imbalance: images and boxes per class, each class's ratio to the largest (by images), a warning above a limit;
  `plan_oversampling` says how often to repeat each training image so small classes approach the largest one.

These are the only rules: the dataset build and the report both call `assess_labels`, with the thresholds from
the config (`training.ambiguity_iou`, `training.imbalance_warn_ratio`), so the two never disagree.

A whole-image class (a class-folder drop) is the box (0.5, 0.5, 1, 1).

Example:
    >>> q = assess_labels([LabelledImage("sha", 1, "a.jpg", (Box("만화", .5, .5, .8, .8), Box("동화", .5, .5, .8, .8)))],
    ...                   names=["만화", "동화"], iou_threshold=0.7, warn_ratio=5.0)
    >>> q.cooccurrence
    {'동화': {'만화': 1}, '만화': {'동화': 1}}
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

from pipeline.images.phash import near_pairs
from pipeline.labels.formats import Box


@dataclass(frozen=True, slots=True)
class LabelledImage:
    key: str  # the image content's SHA-256: the same picture in two drops has one key
    drop: int  # which drop labelled it (the Sample id)
    name: str  # the image's file name, for people
    boxes: tuple[Box, ...]
    current: bool = True  # False: replaced by a later drop (still evidence of ambiguity)
    phash: int | None = None  # the image's perceptual hash (pipeline.images.phash); None: none recorded


@dataclass
class Quality:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> {"images": n, "boxes": m}
    unused: list[str] = field(default_factory=list)  # registered classes with no label
    largest: str | None = None
    smallest: str | None = None
    ratio: float | None = None  # images of the largest class / images of the smallest used class
    ratios: dict[str, float] = field(default_factory=dict)  # class -> images of the largest / its images
    imbalanced: list[str] = field(default_factory=list)  # classes whose ratio is above the warn ratio
    warning: str | None = None
    overlaps: list[dict] = field(default_factory=list)  # one drop, one object, two classes
    # One image content, several drops, different classes: {"image", "names", "classes" (every class it was
    # given), "classes_by_drop", "settled" (its latest drop repeats an earlier drop's classes)}. Two near-duplicate
    # images labelled differently: the same, for the later ("name"), with "near_duplicate_of" (the earlier's name),
    # "near_bits" and "images" (both keys); settled only once their labels agree.
    conflicts: list[dict] = field(default_factory=list)
    cooccurrence: dict[str, dict[str, int]] = field(default_factory=dict)  # symmetric, non-zero entries only

    def matrix(self, names: list[str]) -> list[list[int]]:
        """The co-occurrence matrix over `names`, as rows (for a sheet)."""
        return [[self.cooccurrence.get(a, {}).get(b, 0) for b in names] for a in names]

    def as_dict(self) -> dict:
        return asdict(self)


def iou(a: Box, b: Box) -> float:
    ix = min(a.cx + a.w / 2, b.cx + b.w / 2) - max(a.cx - a.w / 2, b.cx - b.w / 2)
    iy = min(a.cy + a.h / 2, b.cy + b.h / 2) - max(a.cy - a.h / 2, b.cy - b.h / 2)
    inter = max(0.0, ix) * max(0.0, iy)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def same_object(a: Box, b: Box, iou_threshold: float) -> float | None:
    """The IoU of two boxes of different classes that overlap more than the threshold: one object, two names."""
    if a.class_name == b.class_name:
        return None
    v = iou(a, b)
    return v if v > iou_threshold else None


def same_objects(boxes: Sequence[Box], iou_threshold: float, *, split: int | None = None
                 ) -> list[tuple[int, int, float]]:
    """Every pair (i < j, in order) that `same_object` finds, without comparing all pairs; with `split`, only
    pairs with i < split <= j (boxes of two drops, concatenated).

    IoU > t > 0 needs each side within a factor t of the other's (inter <= min w * min h, union >= max area)
    and centres closer than (1 - t) * the larger side. So each box goes into a grid of its own size class
    (floor log2 of width and of height; cells as wide as that distance for the class's largest box), and a box
    is compared only with the boxes of nearby size classes in the few cells its centre could be near.
    """
    if not 0 < iou_threshold < 1:  # the config keeps it there; anything else gets the plain check
        return _all_pairs(boxes, iou_threshold, split)
    reach = (1 - iou_threshold) * (1 + 1e-9)
    grid, levels = _size_grid(boxes, reach)
    d = math.ceil(math.log2(1 / iou_threshold) + 1e-9)  # how many size classes apart two matches can be
    near = {k: [m for m in grid if abs(m[0] - k[0]) <= d and abs(m[1] - k[1]) <= d] for k in grid}
    found = []
    for i, (lx, ly) in levels.items():
        if split is not None and i >= split:
            break
        a = boxes[i]
        for mx, my in near[(lx, ly)]:
            cw, ch = reach * 2.0 ** (mx + 1), reach * 2.0 ** (my + 1)
            rx, ry = reach * 2.0 ** (max(lx, mx) + 1), reach * 2.0 ** (max(ly, my) + 1)  # > the centre distance
            cells = grid[(mx, my)]
            xs = range(math.floor((a.cx - rx) / cw), math.floor((a.cx + rx) / cw) + 1)
            ys = range(math.floor((a.cy - ry) / ch), math.floor((a.cy + ry) / ch) + 1)
            if len(xs) * len(ys) > len(cells):  # a tiny threshold reaches far: walk the occupied cells instead
                candidates = (j for (gx, gy), js in cells.items() if gx in xs and gy in ys for j in js)
            else:
                candidates = (j for gx in xs for gy in ys for j in cells.get((gx, gy), ()))
            for j in candidates:
                if j > i and (split is None or j >= split) and (
                        v := same_object(a, boxes[j], iou_threshold)) is not None:
                    found.append((i, j, v))
    return sorted(found)


def _size_grid(boxes: Sequence[Box], reach: float):
    """Each box with an area, by size class (floor log2 of w, of h) and cell in that class's grid."""
    grid: dict[tuple[int, int], dict[tuple[int, int], list[int]]] = defaultdict(lambda: defaultdict(list))
    levels: dict[int, tuple[int, int]] = {}
    for i, b in enumerate(boxes):
        if b.w > 0 and b.h > 0 and math.isfinite(b.w * b.h * b.cx * b.cy):  # else IoU is 0 with anything
            lx, ly = levels[i] = (math.frexp(b.w)[1] - 1, math.frexp(b.h)[1] - 1)  # exact: 2**l <= w < 2**(l+1)
            cell = (math.floor(b.cx / (reach * 2.0 ** (lx + 1))), math.floor(b.cy / (reach * 2.0 ** (ly + 1))))
            grid[(lx, ly)][cell].append(i)
    return grid, levels


def _all_pairs(boxes: Sequence[Box], iou_threshold: float, split: int | None) -> list[tuple[int, int, float]]:
    return [(i, j, v) for i, j in combinations(range(len(boxes)), 2)
            if (split is None or i < split <= j) and (v := same_object(boxes[i], boxes[j], iou_threshold)) is not None]


def assess_labels(images: list[LabelledImage], *, names: list[str], iou_threshold: float,
                  warn_ratio: float, balance: str = "none", near_bits: int = 0) -> Quality:
    """`balance` only words the advice of the imbalance warning; `near_bits` (watch.near_duplicate_bits, 0: off)
    makes near-duplicates labelled with different classes conflicts."""
    q = Quality()
    current = [im for im in images if im.current]
    _imbalance(q, current, names, warn_ratio, balance)
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    for im in current:
        for i, j, v in same_objects(im.boxes, iou_threshold):
            a, b = im.boxes[i], im.boxes[j]
            q.overlaps.append({"image": im.key, "name": im.name, "classes": sorted((a.class_name, b.class_name)),
                               "iou": round(v, 3)})
            pairs[_pair(a, b)] += 1
    by_key: dict[str, list[LabelledImage]] = defaultdict(list)
    for im in images:
        by_key[im.key].append(im)
    for key, drops in sorted(by_key.items()):
        if len(drops) > 1:
            _across_drops(q, key, drops, iou_threshold, pairs)
    _near_duplicates(q, current, near_bits, iou_threshold, pairs)
    for (a, b), n in sorted(pairs.items()):
        q.cooccurrence.setdefault(a, {})[b] = n
        q.cooccurrence.setdefault(b, {})[a] = n
    return q


def _pair(a: Box, b: Box) -> tuple[str, str]:
    return tuple(sorted((a.class_name, b.class_name)))  # type: ignore[return-value]


def _across_drops(q: Quality, key: str, drops: list[LabelledImage], threshold: float, pairs: dict) -> None:
    drops = sorted(drops, key=lambda im: im.drop)
    classes = {im.drop: sorted({b.class_name for b in im.boxes}) for im in drops}
    sets = [tuple(c) for c in classes.values()]
    if len(set(sets)) > 1:
        q.conflicts.append({"image": key, "names": sorted({im.name for im in drops}),
                            "classes": sorted({c for cs in sets for c in cs}),
                            "classes_by_drop": {str(d): c for d, c in classes.items()},
                            "settled": sets[-1] in sets[:-1]})
    for x, y in combinations(drops, 2):
        both = x.boxes + y.boxes
        for i, j, _v in same_objects(both, threshold, split=len(x.boxes)):
            pairs[_pair(both[i], both[j])] += 1


def _near_duplicates(q: Quality, current: list[LabelledImage], near_bits: int, threshold: float,
                     pairs: dict) -> None:
    """Near-duplicate images (current drops, distinct content) whose class sets differ, as conflicts."""
    for i, j, bits in near_pairs([im.phash for im in current], near_bits):
        x, y = sorted((current[i], current[j]), key=lambda im: im.drop)
        cx, cy = sorted({b.class_name for b in x.boxes}), sorted({b.class_name for b in y.boxes})
        if x.key == y.key or cx == cy:
            continue
        q.conflicts.append({"image": y.key, "names": sorted({x.name, y.name}), "classes": sorted({*cx, *cy}),
                            "classes_by_drop": {str(x.drop): cx, str(y.drop): cy}, "settled": False,
                            "name": y.name, "near_duplicate_of": x.name, "near_bits": bits,
                            "images": [x.key, y.key]})
        both = x.boxes + y.boxes
        for a, b, _v in same_objects(both, threshold, split=len(x.boxes)):
            pairs[_pair(both[a], both[b])] += 1


def near_groups(images: list[LabelledImage], near_bits: int) -> dict[str, str]:
    """Each image key -> its group's anchor: images linked by near-duplicate pairs (at most `near_bits` apart,
    chained) are one group, anchored on the key whose first drop came first. A later copy of a cover thus
    joins the group (and the split) its cover already has. `near_bits` 0: every key is its own anchor."""
    first: dict[str, tuple[int, int | None]] = {}
    for im in images:
        drop, h = first.get(im.key, (im.drop, im.phash))
        first[im.key] = (min(drop, im.drop), h if h is not None else im.phash)
    keys = list(first)
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _bits in near_pairs([first[k][1] for k in keys], near_bits):
        a, b = sorted((root(i), root(j)), key=lambda r: (first[keys[r]][0], keys[r]))
        parent[b] = a  # the root is always the group's earliest key
    return {k: keys[root(i)] for i, k in enumerate(keys)}


def unsettled(q: Quality) -> set[str]:
    """Images whose drops disagree and whose latest drop is not confirmed by an earlier one, and near-duplicates
    labelled differently: under `training.conflicts: exclude` they stay out of training until a drop repeats
    the class it was last given (or the near-duplicates' labels agree)."""
    return {key for c in q.conflicts if not c.get("settled") for key in c.get("images", [c["image"]])}


def _imbalance(q: Quality, current: list[LabelledImage], names: list[str], warn_ratio: float, balance: str) -> None:
    counts: dict[str, dict[str, int]] = {}
    for im in current:
        for c in {b.class_name for b in im.boxes}:
            counts.setdefault(c, {"images": 0, "boxes": 0})["images"] += 1
        for b in im.boxes:
            counts[b.class_name]["boxes"] += 1
    order = {n: i for i, n in enumerate(names)}
    q.counts = dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    q.unused = [n for n in names if n not in counts]
    if not counts:
        return
    q.largest = max(counts, key=lambda c: (counts[c]["images"], c))
    q.smallest = min(counts, key=lambda c: (counts[c]["images"], c))
    q.ratio = counts[q.largest]["images"] / counts[q.smallest]["images"]
    q.ratios = {c: counts[q.largest]["images"] / n["images"] for c, n in q.counts.items()}
    q.imbalanced = [c for c, r in q.ratios.items() if r > warn_ratio]
    if q.ratio > warn_ratio:
        advice = ("training.balance: oversample repeats them, up to training.max_repeat times"
                  if balance == "none" else "oversampling repeats them at most training.max_repeat times")
        q.warning = (f"class imbalance: {q.largest!r} has {counts[q.largest]['images']} images, {q.smallest!r} "
                     f"{counts[q.smallest]['images']} (ratio {q.ratio:.1f} > training.imbalance_warn_ratio "
                     f"{warn_ratio:g}); label more {q.smallest!r} images ({advice})")


@dataclass
class Balance:
    repeats: dict[str, int]  # image key -> how often it appears in the training list
    target: float  # the largest class's images: what the others are repeated toward
    max_repeat: int  # no image repeats more often than this
    factors: dict[str, float]  # class -> target / its images, at least 1, at most max_repeat
    before: dict[str, int]  # images per class
    after: dict[str, int]  # training-list entries per class

    def summary(self, order: list[str] = ()) -> str:
        """"comics 243 -> 243, poetry 48 -> 192": per class (in `order`, then by name), training images before
        and entries after."""
        rank = {n: i for i, n in enumerate(order)}
        classes = sorted(self.before, key=lambda c: (rank.get(c, len(rank)), c))
        return ", ".join(f"{c} {self.before[c]} -> {self.after.get(c, self.before[c])}" for c in classes)


def plan_oversampling(images: list[tuple[str, list[str]]], *, max_repeat: int = 4) -> Balance:
    """Repeat images of small classes so each class approaches the largest, at most `max_repeat` times.

    Toward the largest rather than the median: with one dominant class and several equal small ones (the users'
    case) the median is a small class and nothing would repeat. An image repeats by the largest factor among its
    classes, rounded half up; background images once. `max_repeat` 1 gives the counts without repeating.
    """
    before: dict[str, int] = defaultdict(int)
    for _key, classes in images:
        for c in set(classes):
            before[c] += 1
    if not before:
        return Balance({k: 1 for k, _ in images}, 0.0, max_repeat, {}, {}, {})
    target = max(before.values())
    factors = {c: min(float(max_repeat), max(1.0, target / n)) for c, n in sorted(before.items())}
    repeats = {k: max([1] + [math.floor(factors[c] + 0.5) for c in set(classes)]) for k, classes in images}
    after: dict[str, int] = defaultdict(int)
    for k, classes in images:
        for c in set(classes):
            after[c] += repeats[k]
    return Balance(repeats, float(target), max_repeat, factors, dict(sorted(before.items())),
                   dict(sorted(after.items())))
