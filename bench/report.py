"""Time and peak memory to write the Excel report for 100,000 predictions and 300,000 detections.

    python bench/report.py [--predictions N] [--boxes-per-image K] [--keep DIR]

The database is filled with bulk inserts first (not timed); the report is then written in a child process so
its peak memory (ru_maxrss) is the report's alone. Target on a 2-core machine: under 30 s and under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

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


def child(url: str, home: Path, out: Path) -> None:
    from pipeline.report.workbook import write_report
    from watcher.config import Config, dataset_options

    engine = make_engine(url)
    t = time.perf_counter()
    write_report(engine, out, home=home, labels=dataset_options(Config()))
    seconds = time.perf_counter() - t
    engine.dispose()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_mib": round(peak_mib, 1)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=int, default=100_000)
    ap.add_argument("--boxes-per-image", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the database and workbook in this folder")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
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
        out = home / "reports" / "bench.xlsx"
        proc = subprocess.run([sys.executable, __file__, "--child", url, str(home), str(out)], capture_output=True,
                              text=True, check=False)
        if proc.returncode:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        ok = got["seconds"] < 30 and got["peak_mib"] < 1024
        print(f"report: {got['seconds']:.1f} s, peak memory {got['peak_mib']:.0f} MiB, "
              f"{out.stat().st_size / 2**20:.1f} MiB on disk (target < 30 s, < 1024 MiB): {'ok' if ok else 'SLOW'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
