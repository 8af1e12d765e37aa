"""Files/s with 1, 2 and 3 inference workers on one PostgreSQL database and one inbox.

    .venv/bin/python bench/scale.py [--files 2000] [--workers 1 2 3]

Each worker is a real `coverwatch` daemon process (the decode step: real JPEG decoding per file, no model, so
the figure is about claiming and bookkeeping across workers). A throwaway PostgreSQL server is started for the
run (Debian's postgresql must be installed). On a 2-core machine, 3 workers cannot beat 2 cores: read the
ratio to 1 worker, not the absolute figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from storage.db import make_engine, session_scope, upgrade_database  # noqa: E402
from storage.queries import live_workers  # noqa: E402
from storage.tables import File  # noqa: E402
from bench._data import coco_images  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from watcher.home import init_home  # noqa: E402

def prepare(root: Path, url: str, n: int) -> tuple[Path, Path]:
    home = root / "home"
    cfg = init_home(home)
    text = cfg.read_text().replace("settle_seconds: 1.0", "settle_seconds: 0.2")
    cfg.write_text(text.replace("database: sqlite:///coverwatch.db", f"database: {url}"))
    staging = root / "staging"
    staging.mkdir()
    images = coco_images()
    for i in range(n):
        (staging / f"{i:05d}.jpg").write_bytes(images[i % len(images)].read_bytes() + f"#{i}".encode())
    return home, staging


def count(engine, query) -> int:
    with session_scope(engine) as s:
        return s.scalar(query) or 0


def run(url: str, workers: int, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home, staging = prepare(root, url, n)
        engine = make_engine(url)
        upgrade_database(engine)
        env = {**os.environ, "YOLO_OFFLINE": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "tests.watcher.daemon_proc", str(home),
                                   str(root / f"calls-{i}")], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(workers)]
        try:
            while True:
                with session_scope(engine) as s:
                    if len(live_workers(s)) == workers:
                        break
                time.sleep(0.1)
            t0 = time.perf_counter()
            for p in sorted(staging.iterdir()):
                os.rename(p, home / "inbox" / p.name)
            done = select(func.count()).select_from(File).where(File.moved_at.is_not(None))
            while count(engine, done) < n:
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(30)
            engine.dispose()
        return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    if shutil.which("runuser") is None and os.geteuid() == 0:
        sys.exit("needs runuser to start PostgreSQL as user postgres")
    server = PostgresServer().start()
    try:
        rates = {w: run(server.new_database(), w, args.files) for w in args.workers}
    finally:
        server.stop()
    base = rates[args.workers[0]]
    for w, r in rates.items():
        print(f"{w} worker(s): {r:.0f} files/s ({r / base:.2f}x of {args.workers[0]}), {args.files} files, "
              f"decode step, PostgreSQL, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
