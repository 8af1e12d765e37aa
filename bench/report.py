"""Time and peak memory to write the Excel report for 100,000 predictions and 300,000 detections, with
thumbnails beside the newest 2,000 (reports.thumbnails' default).

    python bench/report.py [--predictions N] [--boxes-per-image K] [--thumbnails N] [--keep DIR]

The database is filled with bulk inserts first (not timed), and the newest rows' archive paths get real photos
(coco, each copy made distinct so that each is a thumbnail of its own). The report is then written twice, each in a
child process so its peak memory (ru_maxrss) is the report's alone: first with an empty thumbnail cache (every
thumbnail made), then with the cache the first left. Target on a 2-core machine: under 30 s and under 1 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from bench._data import coco_images  # noqa: E402
from storage.db import make_engine, upgrade_database  # noqa: E402
from storage.tables import ClassName, Detection, File, ModelVersion, Prediction  # noqa: E402

CLASSES = ["만화", "동화", "상상화", "소설", "시집", "book", "person"]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fill(url: str, n: int, boxes: int, chunk: int = 20_000) -> None:
    engine = make_engine(url)
    upgrade_database(engine)
    rnd = random.Random(7)
    with engine.begin() as conn:
        conn.execute(insert(ClassName), [{"name": c, "position": i} for i, c in enumerate(CLASSES[:5])])
        conn.execute(insert(ModelVersion), [{"version": "v1", "task": "detect", "path": "models/v1/weights/best.pt",
                                             "state": "champion", "promoted_at": T0, "created_at": T0,
                                             "metrics": {"metrics/mAP50-95(B)": 0.6}}])
        for start in range(0, n, chunk):
            ids = range(start + 1, min(n, start + chunk) + 1)
            at = [T0 + timedelta(seconds=i) for i in ids]
            conn.execute(insert(File), [
                {"id": i, "folder": "inbox", "source_path": f"batch/표지_{i}.jpg", "original_name": f"표지_{i}.jpg",
                 "size": 100_000, "state": "processed", "final_path": f"archive/inbox/batch/표지_{i}.jpg",
                 "created_at": t, "updated_at": t, "processed_at": t} for i, t in zip(ids, at)])
            conn.execute(insert(Prediction), [
                {"id": i, "file_id": i, "model_version": "v1", "predicted_class": rnd.choice(CLASSES),
                 "confidence": rnd.random(), "created_at": t} for i, t in zip(ids, at)])
            conn.execute(insert(Detection), [
                {"prediction_id": i, "class_name": rnd.choice(CLASSES), "confidence": rnd.random(),
                 "x1": 0.1, "y1": 0.2, "x2": 0.5, "y2": 0.9} for i in ids for _ in range(boxes)])
    engine.dispose()


def photos(home: Path, n: int, newest: int) -> None:
    """Real photos at the archive paths of the newest `newest` of `n` predictions, and their sha256."""
    from sqlalchemy import update

    images = [p.read_bytes() for p in coco_images()]
    engine = make_engine(f"sqlite:///{home / 'bench.db'}")
    with engine.begin() as conn:
        for i in range(max(1, n - newest + 1), n + 1):
            data = images[i % len(images)] + i.to_bytes(4, "big")  # bytes after the JPEG's end: a distinct file
            path = home / "archive" / "inbox" / "batch" / f"표지_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            conn.execute(update(File).where(File.id == i).values(sha256=hashlib.sha256(data).hexdigest()))
    engine.dispose()


def child(url: str, home: Path, out: Path, thumbnails: int) -> None:
    from pipeline.report.workbook import write_report
    from watcher.config import Config, dataset_options, thumbnail_options

    engine = make_engine(url)
    cfg = Config.model_validate({"reports": {"thumbnails": thumbnails}})
    t = time.perf_counter()
    write_report(engine, out, home=home, labels=dataset_options(cfg), thumbnails=thumbnail_options(cfg))
    seconds = time.perf_counter() - t
    engine.dispose()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_mib": round(peak_mib, 1)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=int, default=100_000)
    ap.add_argument("--boxes-per-image", type=int, default=3)
    ap.add_argument("--thumbnails", type=int, default=2000, help="reports.thumbnails (0: none)")
    ap.add_argument("--keep", type=Path, help="keep the database and workbook in this folder")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]), int(args.child[3]))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        home = args.keep or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{home / 'bench.db'}"
        (home / "bench.db").unlink(missing_ok=True)
        t = time.perf_counter()
        fill(url, args.predictions, args.boxes_per_image)
        print(f"filled {args.predictions:,} predictions, {args.predictions * args.boxes_per_image:,} detections "
              f"in {time.perf_counter() - t:.1f} s")
        shutil.rmtree(home / ".thumbs", ignore_errors=True)
        photos(home, args.predictions, args.thumbnails)
        out = home / "reports" / "bench.xlsx"
        ok = True
        for run in ("cold thumbnail cache", "warm thumbnail cache") if args.thumbnails else ("no thumbnails",):
            got = _report(url, home, out, args.thumbnails)
            if got is None:
                return 1
            ok = ok and got["seconds"] < 30 and got["peak_mib"] < 1024
            print(f"report, {run}: {got['seconds']:.1f} s, peak memory {got['peak_mib']:.0f} MiB, "
                  f"{out.stat().st_size / 2**20:.1f} MiB on disk (target < 30 s, < 1024 MiB)")
        print("ok" if ok else "SLOW")
        return 0 if ok else 1


def _report(url: str, home: Path, out: Path, thumbnails: int) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--child", url, str(home), str(out), str(thumbnails)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])

if __name__ == "__main__":
    sys.exit(main())
