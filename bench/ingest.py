"""Watcher throughput and drop-to-row latency, with a no-op step (the watcher and bookkeeping alone).

    .venv/bin/python bench/ingest.py [--files 5000] [--singles 40]

Prints files/s for a burst, and the median and p99 latency from a single drop (an atomic rename into the
inbox) to its committed row, minus settle_seconds. Targets on a 2-core machine: >= 500 files/s, and under
50 ms beyond settle_seconds. Ratios, not absolute times, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.inference.steps import NoopStep  # noqa: E402
from watcher.config import load_config  # noqa: E402
from watcher.daemon import Daemon  # noqa: E402
from watcher.home import init_home  # noqa: E402
from watcher.logs import setup_logging  # noqa: E402

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def make_home(root: Path, settle: float) -> Path:
    home = root / "home"
    cfg = init_home(home)
    cfg.write_text(cfg.read_text().replace("settle_seconds: 1.0", f"settle_seconds: {settle}"))
    return home


def start(home: Path) -> tuple[Daemon, threading.Thread]:
    d = Daemon(load_config(home / "coverwatch.yaml"), step=NoopStep())
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    while d.observer is None:
        time.sleep(0.01)
    return d, t


def count_final(db: sqlite3.Connection) -> int:
    return db.execute("SELECT count(*) FROM files WHERE moved_at IS NOT NULL").fetchone()[0]


def burst(home: Path, n: int, staging: Path) -> float:
    """Files/s from the first drop to the last committed move; files appear by rename, as uploads finish."""
    for i in range(n):
        (staging / f"{i:06d}.png").write_bytes(PNG + i.to_bytes(4, "big"))
    d, t = start(home)
    db = sqlite3.connect(home / "coverwatch.db")
    t0 = time.perf_counter()
    for i in range(n):
        os.rename(staging / f"{i:06d}.png", home / "inbox" / f"{i:06d}.png")
    while count_final(db) < n:
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    d.stop.set()
    t.join()
    db.close()
    return n / elapsed


def singles(home: Path, n: int, staging: Path, settle: float) -> list[float]:
    d, t = start(home)
    db = sqlite3.connect(home / "coverwatch.db")
    base = count_final(db)
    out = []
    for i in range(n):
        src = staging / f"single-{i}.png"
        src.write_bytes(PNG + b"single" + i.to_bytes(4, "big"))
        t0 = time.perf_counter()
        os.rename(src, home / "inbox" / src.name)
        while count_final(db) < base + i + 1:
            time.sleep(0.001)
        out.append((time.perf_counter() - t0 - settle) * 1000)
        time.sleep(0.05)
    d.stop.set()
    t.join()
    db.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--singles", type=int, default=40)
    ap.add_argument("--settle", type=float, default=0.2)
    args = ap.parse_args()
    setup_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        staging = root / "staging"
        staging.mkdir()
        home = make_home(root, args.settle)
        rate = burst(home, args.files, staging)
        lat = sorted(singles(home, args.singles, staging, args.settle))
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    print(f"burst: {args.files} files at {rate:.0f} files/s (target >= 500), settle_seconds={args.settle}")
    print(f"single drop -> committed row, beyond settle: median {statistics.median(lat):.1f} ms, "
          f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms over {len(lat)} drops (target < 50 ms)")


if __name__ == "__main__":
    main()
