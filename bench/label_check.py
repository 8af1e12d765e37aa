"""The label overlap check (`quality.assess_labels`) on one image of 1k, 3k and 6k boxes: the old all-pairs
loop against the size-class grid (`quality.same_objects`), in the same run, on the same boxes.

    .venv/bin/python bench/label_check.py [--boxes 1000 3000 6000] [--seed 14]

Before the grid, one label file with thousands of boxes held every dataset build (and the daemon) for
seconds to minutes; `watch.max_boxes` (1,000) now also caps what one file can bring. Boxes are random, sides
1-20% of the image, two classes; the two results are checked to be identical.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.labels.formats import Box  # noqa: E402
from pipeline.labels.quality import LabelledImage, assess_labels, same_object  # noqa: E402

THRESHOLD = 0.7


def brute_force(boxes: list[Box], threshold: float) -> list[tuple[int, int, float]]:
    """The reference: what assess_labels did before, every pair of boxes of one image."""
    return [(i, j, v) for (i, a), (j, b) in combinations(enumerate(boxes), 2)
            if (v := same_object(a, b, threshold)) is not None]


def random_boxes(n: int, rng: random.Random) -> list[Box]:
    return [Box(rng.choice(("만화", "동화")), rng.random(), rng.random(), rng.uniform(0.01, 0.2),
                rng.uniform(0.01, 0.2)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[1000, 3000, 6000])
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"{'boxes':>6} {'all pairs s':>12} {'grid s':>8} {'speed-up':>9} {'overlaps':>9}")
    for n in args.boxes:
        boxes = random_boxes(n, rng)
        t0 = time.perf_counter()
        old = brute_force(boxes, THRESHOLD)
        t1 = time.perf_counter()
        q = assess_labels([LabelledImage("sha", 1, "a.jpg", tuple(boxes))], names=["만화", "동화"],
                          iou_threshold=THRESHOLD, warn_ratio=5.0)
        t2 = time.perf_counter()
        assert [round(v, 3) for *_, v in old] == [o["iou"] for o in q.overlaps], "the grid missed an overlap"
        print(f"{n:>6} {t1 - t0:>12.2f} {t2 - t1:>8.3f} {(t1 - t0) / (t2 - t1):>8.0f}x {len(old):>9}")


if __name__ == "__main__":
    main()
