"""Near-duplicates: how far apart pHashes are on real photos, and how fast a lookup is among 100,000.

    .venv/bin/python bench/near_duplicates.py [--only distances|lookup] [--rows 100000] [--task classify]

distances: every coco image (coco128 beside the project, else coco24) against its re-saved (JPEG quality 95),
re-compressed (quality 60), resized (0.5x) and cropped (2%: 1% off each edge; 2%x2: 2% off each edge) copies, and every pair of distinct
photos, all hashed through the inbox's own decode (`decode_for_model`, drafted JPEGs included). It prints the
distances and, per threshold, how many copies it finds and how many distinct pairs it would call near-duplicates.

lookup: a SQLite database at head with `--rows` archived inbox files with hashes (random 64-bit values: real
hashes cluster more, see the band figure of `distances`), then `nearest` for 1,000 new hashes, at thresholds
3, 6 (the default) and 11: the time per lookup, and beside it the time to read every stored hash instead.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from bench._data import coco_images  # noqa: E402
from pipeline.images.phash import bands, distance, perceptual_hash  # noqa: E402
from pipeline.images.preprocess import decode_for_model  # noqa: E402

MAX_PIXELS = 89_478_485


def _hash(data: bytes, task: str, imgsz: int) -> int:
    return perceptual_hash(decode_for_model(data, max_pixels=MAX_PIXELS, task=task, imgsz=imgsz).image)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def variants(data: bytes) -> dict[str, bytes]:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    return {"resaved q95": _jpeg(img, 95), "jpeg q60": _jpeg(img, 60),
            "resized 0.5x": _jpeg(img.resize((w // 2, h // 2), Image.LANCZOS), 90),
            "cropped 2%": _jpeg(_crop(img, 0.01), 90), "cropped 2%x2": _jpeg(_crop(img, 0.02), 90)}


def _crop(img: Image.Image, edge: float) -> Image.Image:
    """`edge` of the width and height off each side (0.01: 2% of each dimension in all)."""
    w, h = img.size
    dx, dy = round(edge * w), round(edge * h)
    return img.crop((dx, dy, w - dx, h - dy))


def _pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1)))]


def distances(task: str, imgsz: int) -> None:
    paths = coco_images()
    t0 = time.perf_counter()
    originals, copies = [], {}
    for p in paths:
        data = p.read_bytes()
        h = _hash(data, task, imgsz)
        originals.append(h)
        for name, v in variants(data).items():
            copies.setdefault(name, []).append(distance(h, _hash(v, task, imgsz)))
    distinct = [distance(a, b) for i, a in enumerate(originals) for b in originals[i + 1:]]
    print(f"{len(paths)} photos ({paths[0].parent.parent.parent.name}), task {task} at {imgsz}, "
          f"{time.perf_counter() - t0:.1f} s")
    for name, d in copies.items():
        print(f"  {name:12s} to its original: median {statistics.median(d):.0f}, p95 {_pct(d, 0.95)}, "
              f"max {max(d)} bits")
    print(f"  distinct pairs ({len(distinct)}): min {min(distinct)}, p1 {_pct(distinct, 0.01)}, "
          f"median {statistics.median(distinct):.0f} bits")
    for t in range(0, 13):
        found = {name: sum(x <= t for x in d) for name, d in copies.items()}
        false = sum(x <= t for x in distinct)
        print(f"  threshold {t:2d}: copies found " + ", ".join(f"{n} {k}/{len(paths)}" for n, k in found.items())
              + f"; distinct pairs matched {false}")
    top = max(Counter(b[0] for b in map(bands, originals)).values())
    print(f"  band skew: the commonest value of band 0 is shared by {top} of {len(originals)} photos")


def lookup(rows: int, seed: int = 1) -> None:
    from sqlalchemy import insert

    from pipeline.intake.near import nearest
    from storage.db import make_engine, session_scope, upgrade_database
    from storage.tables import File

    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'cw.db'}")
        upgrade_database(engine)
        with session_scope(engine) as s:
            for k in range(0, rows, 10_000):
                s.execute(insert(File), [_row(i, rnd.getrandbits(64)) for i in range(k, min(rows, k + 10_000))])
        queries = [rnd.getrandbits(64) for _ in range(1000)]
        for t in (3, 6, 11):
            with session_scope(engine) as s:
                t0 = time.perf_counter()
                for q in queries:
                    nearest(s, "inbox", q, t)
                ms = (time.perf_counter() - t0) * 1000 / len(queries)
            print(f"lookup among {rows:,} hashes, threshold {t}: {ms:.2f} ms per new image")
        print(f"for comparison, reading every stored hash: {_scan(engine, queries[:5]):.0f} ms per new image")
        engine.dispose()


def _scan(engine, queries: list[int]) -> float:
    """What the bands spare: the nearest hash by reading all of them."""
    from sqlalchemy import select

    from pipeline.images.phash import from_db
    from storage.db import session_scope
    from storage.tables import File

    with session_scope(engine) as s:
        t0 = time.perf_counter()
        for q in queries:
            min(distance(q, from_db(v)) for v in s.scalars(select(File.phash).where(File.folder == "inbox")))
        return (time.perf_counter() - t0) * 1000 / len(queries)


def _row(i: int, h: int) -> dict:
    from pipeline.images.phash import to_db

    b = bands(h)
    return {"folder": "inbox", "source_path": f"{i}.jpg", "original_name": f"{i}.jpg", "size": 1, "mtime_ns": 0,
            "sha256": f"{i:064x}", "state": "processed", "attempts": 0, "phash": to_db(h), "phash_b0": b[0],
            "phash_b1": b[1], "phash_b2": b[2], "phash_b3": b[3], "final_path": f"archive/inbox/{i}.jpg"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("distances", "lookup"))
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--task", choices=("classify", "detect"), default="classify")
    args = ap.parse_args()
    if args.only != "lookup":
        distances(args.task, 224 if args.task == "classify" else 640)
    if args.only != "distances":
        lookup(args.rows)


if __name__ == "__main__":
    main()
