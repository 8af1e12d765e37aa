"""Peak RSS of `coverwatch process` on one tall PNG (issue 14, item 8): 1x80000 pixels, a few hundred bytes.

    .venv/bin/python bench/tall_png.py                        # this checkout
    .venv/bin/python bench/tall_png.py --code /path/to/older   # the same drop through an older checkout
    .venv/bin/python bench/tall_png.py --max-aspect 100000     # let it through: the bounded resize alone

A tiny classify model is trained the way the tests train one (tests/pipeline/conftest.py), and the home asks
for model.imgsz 96, as in the issue. Each run is `python -m watcher process` in its own process; its peak RSS is
the kernel's figure for that child (wait4's ru_maxrss). A run on one ordinary coco128 photo gives the floor
(Python, torch, the model). Before the fix the tall PNG was classified and the resize of its short side to 96
made a 96 x 7,680,000 image; now it is `extreme_aspect`, and past that check only the crop is resized.

Measured on the 2-core development machine (tiny yolo11n-cls, ONNX Runtime on the CPU):
    before (e6237f1)          photo 1366 MiB   tall PNG 4195 MiB (processed)
    after                     photo 1260 MiB   tall PNG 1259 MiB (extreme_aspect)
    after, --max-aspect 1e5   photo 1261 MiB   tall PNG 1260 MiB (processed: the bounded resize alone)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._data import coco_images  # noqa: E402 - coco128 beside the project, else the carried coco24


def _env(workdir: Path) -> None:
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(workdir / "yolo-config"))


def make_home(workdir: Path, code: Path, weights: Path, imgsz: int, max_aspect: float | None) -> Path:
    import yaml

    home = workdir / "home"
    subprocess.run([sys.executable, "-m", "watcher", "init", str(home)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(code)})
    cfg = home / "coverwatch.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["task"] = "classify"
    raw["model"].update(weights=str(weights), imgsz=imgsz, device="cpu")
    raw["watch"].update(settle_seconds=0.0)
    if max_aspect is not None:
        raw["watch"]["max_aspect"] = max_aspect
    cfg.write_text(yaml.safe_dump(raw))
    return home


def process_peak_mb(home: Path, code: Path) -> tuple[float, int, str]:
    """Peak RSS (MiB) of one `coverwatch process`, its exit status and its last stderr line."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(home / "coverwatch.yaml"), "process"],
                            cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "")
    return usage.ru_maxrss / 1024, proc.returncode, last[-160:]


def states(home: Path) -> list[tuple[str, str, str | None]]:
    import sqlite3

    try:
        with sqlite3.connect(home / "coverwatch.db") as db:
            return db.execute("SELECT original_name, state, reason FROM files ORDER BY id").fetchall()
    except sqlite3.Error:
        return []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, default=ROOT, help="checkout to run `coverwatch process` from")
    p.add_argument("--imgsz", type=int, default=96)
    p.add_argument("--max-aspect", type=float, default=None, help="watch.max_aspect for the home (default: its own)")
    p.add_argument("--weights", type=Path, default=None, help="a classify best.pt (default: train a tiny one)")
    args = p.parse_args(argv)

    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="coverwatch-bench-tall-"))
    _env(work)
    try:
        weights = args.weights
        if weights is None:
            from tests.pipeline.conftest import train_tiny_classify

            weights = train_tiny_classify(work / "train")
        for label, drop in (("one coco128 photo (the floor)", "photo"), ("1x80000 PNG", "tall")):
            run = work / drop
            run.mkdir()
            home = make_home(run, args.code.resolve(), weights, args.imgsz, args.max_aspect)
            if drop == "photo":
                shutil.copy(coco_images()[0], home / "inbox" / "photo.jpg")
            else:
                Image.new("RGB", (1, 80_000), (200, 30, 30)).save(home / "inbox" / "tall.png", optimize=True)
                print(f"tall.png: {(home / 'inbox' / 'tall.png').stat().st_size} bytes")
            peak, rc, last = process_peak_mb(home, args.code.resolve())
            print(f"{label:32s} peak RSS {peak:7.0f} MiB  exit {rc}  rows {states(home)}")
            if rc:
                print(f"    {last}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
