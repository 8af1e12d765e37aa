"""The label audit against planted label errors, and what the label files alone show, in one run.

    .venv/bin/python bench/label_health.py [--classes 4] [--per-class 60] [--flip 0.1] [--folds 3] [--epochs 10]
                                          [--imgsz 32] [--device cpu] [--seed 16]

A class-folder dataset of coco128 box crops (the `--classes` most common classes, `--per-class` crops each),
with two plants: a known `--flip` share of the labels changed to another class, and one class split at random
between two names (`chair` and `chair_2`: one class under overlapping names). Then:

- the audit: `coverwatch audit`'s job (K real yolo11n-cls fold runs from scratch, cleanlab) in a scratch home;
- the label-only baseline: what coverwatch flagged before it (`pipeline.labels.quality.assess_labels`: the
  same picture given different classes in different drops, boxes of two classes on one object).

Printed: precision and recall of the flagged images against the planted flips, the rank of the planted pair
among the overlapping pairs, and the wall time, for both. Tiny sizes on a CPU make weak fold models (and so a
low precision); `--imgsz 64 --epochs 30 --device 0` on a GPU is closer to a real run.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import coco_dir  # noqa: E402


def crops(coco: Path, n_classes: int, per_class: int, rng: random.Random):
    """(picture, coco class name) pairs: the most common classes' boxes with sides of 16 px and more."""
    import yaml
    from PIL import Image

    from tests.pipeline.conftest import _pixel_box

    names = yaml.safe_load((coco / "data.yaml").read_text())["names"]
    boxes = []
    for label in sorted((coco / "labels" / "train2017").glob("*.txt")):
        for line in label.read_text().splitlines():
            cls, *xywh = line.split()
            boxes.append((label.stem, int(cls), *map(float, xywh)))
    common = [c for c, _n in Counter(b[1] for b in boxes).most_common(n_classes)]
    out, taken = [], Counter()
    rng.shuffle(boxes)
    for stem, cls, cx, cy, w, h in boxes:
        if cls not in common or taken[cls] >= per_class:
            continue
        with Image.open(coco / "images" / "train2017" / f"{stem}.jpg") as im:
            box = _pixel_box(cx, cy, w, h, *im.size)
            if min(box[2] - box[0], box[3] - box[1]) < 16:
                continue
            out.append((im.convert("RGB").crop(box), names[cls]))
        taken[cls] += 1
    return out


def plant(pictures, flip: float, rng: random.Random):
    """Split the last class between two names, then flip `flip` of the labels to another (unrelated) class."""
    classes = sorted({c for _p, c in pictures})
    split = classes[-1]
    twin = f"{split}_2"
    renamed = [(p, twin if c == split and rng.random() < 0.5 else c) for p, c in pictures]
    names = sorted({c for _p, c in renamed})
    flipped = set(rng.sample(range(len(renamed)), round(flip * len(renamed))))
    planted = []
    for i, (p, c) in enumerate(renamed):
        if i in flipped:
            family = {split, twin} if c in (split, twin) else {c}
            c = rng.choice([n for n in names if n not in family])
        planted.append((p, c))
    return planted, names, flipped, (split, twin)


def run_audit(pictures, names, args) -> tuple[dict, float]:
    """The audit job on a scratch home; index -> (given, suggested, flagged), and the pairs, with its wall time."""
    from sqlalchemy import select

    from pipeline.training.job import run_job
    from pipeline.training.queue import request_training, run_summary
    from pipeline.training.supervisor import TrainingSupervisor
    from pipeline.training.trainer import UltralyticsTrainer
    from storage.db import make_engine, session_scope, upgrade_database
    from storage.tables import AuditImage, ClassOverlap, File, LabelAudit
    from tests.pipeline.audit_fakes import snapshot_of, snapshot_prepare
    from tests.pipeline.training_fakes import InlineJob
    from watcher.config import Config, training_settings

    home = Path(tempfile.mkdtemp(prefix="cw-bench-audit-"))
    engine = make_engine(f"sqlite:///{home / 'cw.db'}")
    upgrade_database(engine)
    data = snapshot_of(engine, home, pictures, names)
    settings = training_settings(Config(home=home, task="classify", training=dict(
        imgsz=args.imgsz, batch=16, audit_epochs=args.epochs, device=args.device, min_new_labels=10**9)),
        workers=0)  # min_new_labels: the new labels must not queue a training run first
    trainer = UltralyticsTrainer(nice=0)
    sup = TrainingSupervisor(engine, settings, prepare=snapshot_prepare(data, names), poll_seconds=0,
                             spawn=lambda rid, log: InlineJob(run_job(engine, rid, trainer=trainer)))
    run_id, _ = request_training(engine, "manual", kind="audit", folds=args.folds)
    t0 = time.perf_counter()
    sup.tick(0.0)
    seconds = time.perf_counter() - t0
    summary = run_summary(engine, run_id)
    if summary["state"] != "done":
        raise SystemExit(f"the audit ended {summary['state']}: {summary['error']}")
    with session_scope(engine) as s:
        index = {name: int(name[5:8]) for (name,) in s.execute(select(File.original_name))}
        rows = s.execute(select(AuditImage, File.original_name).join(File, File.id == AuditImage.file_id)).all()
        images = {index[n]: (a.given_class, a.suggested_class, a.flagged) for a, n in rows}
        pairs = [(p.class_a, p.class_b) for p in s.scalars(select(ClassOverlap).order_by(ClassOverlap.rank))]
        audit = s.scalar(select(LabelAudit))
        accuracy = (audit.accuracy, audit.majority_share)
    engine.dispose()
    shutil.rmtree(home, ignore_errors=True)
    return {"images": images, "pairs": pairs, "accuracy": accuracy}, seconds


def run_baseline(pictures) -> tuple[set[int], list[tuple[str, str]], float]:
    """What the label files alone flag: conflicting drops and two classes on one object (and their pairs)."""
    import hashlib

    from pipeline.labels.formats import WHOLE_IMAGE, Box
    from pipeline.labels.quality import LabelledImage, assess_labels

    t0 = time.perf_counter()
    history = [LabelledImage(hashlib.sha256(p.tobytes()).hexdigest(), i, f"cover{i:03d}.png",
                             (Box(c, *WHOLE_IMAGE),)) for i, (p, c) in enumerate(pictures)]
    q = assess_labels(history, names=sorted({c for _p, c in pictures}), iou_threshold=0.7, warn_ratio=5.0)
    keys = {h.key: h.drop for h in history}
    flagged = {keys[o["image"]] for o in q.overlaps} | {keys[c["image"]] for c in q.conflicts}
    pairs = sorted({tuple(sorted((a, b))) for a, row in q.cooccurrence.items() for b in row},
                   key=lambda ab: -q.cooccurrence[ab[0]][ab[1]])
    return flagged, pairs, time.perf_counter() - t0


def figures(flagged: set[int], flipped: set[int], pairs, planted_pair) -> str:
    hits = len(flagged & flipped)
    precision = f"{hits / len(flagged):.2f}" if flagged else "n/a (none flagged)"
    rank = next((k for k, p in enumerate(pairs, 1) if set(p) == set(planted_pair)), None)
    return (f"flagged {len(flagged):>3}, of them planted {hits:>3}; precision {precision}, recall "
            f"{hits / len(flipped):.2f}; planted pair rank: {rank or 'not found'} of {len(pairs)} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco", type=Path, default=None)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--imgsz", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rng = random.Random(args.seed)
    coco = coco_dir(args.coco)
    pictures, names, flipped, pair = plant(crops(coco, args.classes, args.per_class, rng), args.flip, rng)
    print(f"{coco.name}: {len(pictures)} crops, classes {', '.join(names)}; planted {len(flipped)} flipped labels "
          f"and the pair {pair[0]} / {pair[1]} (one class, split at random)")
    found, seconds = run_audit(pictures, names, args)
    flagged = {i for i, (_g, _s, f) in found["images"].items() if f}
    print(f"audit ({args.folds} folds x {args.epochs} epochs, yolo11n-cls at {args.imgsz}, {args.device}): "
          f"{figures(flagged, flipped, found['pairs'], pair)}; {seconds:.1f} s; fold models right on "
          f"{found['accuracy'][0]:.0%} of the given labels (the largest class: {found['accuracy'][1]:.0%})")
    base_flagged, base_pairs, base_seconds = run_baseline(pictures)
    print(f"label files alone (quality.assess_labels): {figures(base_flagged, flipped, base_pairs, pair)}; "
          f"{base_seconds:.3f} s")


if __name__ == "__main__":
    main()
