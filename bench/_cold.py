"""Whole processes from a cold start: `coverwatch process` against `yolo predict` on the same 96 images, the time
to the first committed row, and `coverwatch run` from start to its first row. bench/throughput.py calls
`cold_starts` per task and workload; the ONNX export is cached by then (the (b) runs made it), as it is on any
host after its first run.

The home has run before, as a cron job's or a service's home has: its database exists and this hour's Excel
report is written (one `coverwatch process` on an empty inbox, which makes the database but writes no report,
then `coverwatch report`). The first run of a new home also makes the database and writes the first report (with
a thumbnail of each image); that figure is printed beside, not as the target.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

COLD_IMAGES = 96
ROOT = Path(__file__).resolve().parents[1]


def cold_starts(workdir: Path, task: str, weights: Path, sources: list[Path], imgsz: int, workload: str,
                device: str, repeat: int = 2) -> None:
    from bench.throughput import inbox_of

    folder = workdir / f"cold-{task}-{workload}"
    images = inbox_of(folder, COLD_IMAGES, sources, "images")
    runs = []
    for r in range(repeat):
        home = _home(folder / f"home{r}", task, weights, imgsz, device, images, primed=True)
        runs.append(("coverwatch", *_coverwatch_process(home)))
        runs.append(("yolo", _yolo_predict(weights, folder / "images", imgsz, device), None))
        home = _home(folder / f"new{r}", task, weights, imgsz, device, images, primed=False)
        runs.append(("new home", *_coverwatch_process(home)))
    best_cw = min(r for r in runs if r[0] == "coverwatch")
    best_new = min(r for r in runs if r[0] == "new home")
    best_yolo = min(r[1] for r in runs if r[0] == "yolo")
    print(f"  cold, whole processes, {COLD_IMAGES} images ({workload}), best of {repeat}:")
    print(f"    coverwatch process {best_cw[1]:6.2f} s (first committed row after {best_cw[2]:.2f} s, "
          "target <= 1.5)")
    print(f"    yolo predict       {best_yolo:6.2f} s")
    print(f"    yolo / coverwatch = {best_yolo / best_cw[1]:.2f}   (target >= 2)")
    print(f"    the first run of a new home (database made, first report written): {best_new[1]:.2f} s, first "
          f"row after {best_new[2]:.2f} s, yolo / it = {best_yolo / best_new[1]:.2f}")
    home = _home(folder / "home-run", task, weights, imgsz, device, images[:16])
    print(f"    coverwatch run: first committed row after {_coverwatch_run(home):.2f} s")
    heavy = _heavy_imports(_home(folder / "home-imports", task, weights, imgsz, device, images[:4]))
    print(f"    torch/ultralytics imported by `process`: {', '.join(heavy) or 'neither'}")


def _home(home: Path, task: str, weights: Path, imgsz: int, device: str, images: list[Path], *,
          primed: bool = True) -> Path:
    """A home for `task` with `images` in its inbox; `primed`: it has run once before (database, report)."""
    import yaml

    from watcher.home import init_home

    cfg = init_home(home)
    raw = yaml.safe_load(cfg.read_text())
    raw.update(task=task)
    raw["model"].update(weights=str(weights), imgsz=imgsz, device=device)
    raw["watch"].update(settle_seconds=0.0)
    cfg.write_text(yaml.safe_dump(raw))
    if primed:  # the database made (a `process` with nothing to do), and this hour's report written
        _coverwatch_process(home, rows=False)
        if _coverwatch(home, "report").wait() != 0:
            raise SystemExit(f"coverwatch report failed in {home}")
    for p in images:
        (home / "inbox" / p.name).write_bytes(p.read_bytes())
    return home


def _coverwatch(home: Path, command: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(home / "coverwatch.yaml"), command],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def _coverwatch_process(home: Path, rows: bool = True) -> tuple[float, float | None]:
    """(seconds for the whole process, seconds from its start to the first committed row; None: `rows` False)."""
    started, t0 = time.time(), time.perf_counter()
    proc = _coverwatch(home, "process")
    if proc.wait() != 0:
        raise SystemExit(f"coverwatch process failed in {home}")
    return time.perf_counter() - t0, _first_row(home) - started if rows else None


def _first_row(home: Path) -> float | None:
    """The wall-clock time (epoch seconds) of the first prediction row, None when there is none yet."""
    try:
        with closing(sqlite3.connect(f"file:{home / 'coverwatch.db'}?mode=ro", uri=True)) as db:
            first = db.execute("SELECT min(created_at) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError:  # no database or no table yet
        return None
    if first is None:
        return None
    when = datetime.fromisoformat(first)
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _yolo_predict(weights: Path, folder: Path, imgsz: int, device: str) -> float:
    yolo = Path(sys.executable).with_name("yolo")
    t0 = time.perf_counter()
    subprocess.run([str(yolo), "predict", f"model={weights}", f"source={folder}", f"imgsz={imgsz}", "batch=16",
                    f"device={'cpu' if device == 'cpu' else 0}", "save=False", "verbose=False"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _coverwatch_run(home: Path) -> float:
    """Seconds from starting the daemon to its first committed row (16 images waiting in the inbox)."""
    started = time.time()
    proc = _coverwatch(home, "run")
    try:
        while (first := _first_row(home)) is None:
            if proc.poll() is not None:
                raise SystemExit(f"coverwatch run exited with {proc.returncode} in {home}")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return first - started


def _heavy_imports(home: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "watcher", "-c", str(home / "coverwatch.yaml"),
                          "process"], cwd=ROOT, capture_output=True, text=True, check=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return sorted(n for n in ("torch", "torchvision", "ultralytics") if n in names)
