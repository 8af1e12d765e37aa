"""Images per second on the same images: Ultralytics' predict (PyTorch and ONNX), coverwatch, the bare forward pass.

    .venv/bin/python bench/throughput.py                      # both tasks, both workloads
    .venv/bin/python bench/throughput.py --task detect -n 256 --detect-weights models/v3/weights/best.pt
    .venv/bin/python bench/throughput.py --only b -n 2000 --workload mixed --no-extras   # peak RSS (< 2 GB)
    .venv/bin/python bench/throughput.py --device cuda        # the same figures on a GPU host

(a) `YOLO(weights).predict(paths, batch=16)`, PyTorch: what the user's notes did.
(b) `coverwatch process` on a pre-filled inbox (Daemon.process_pending): from files on disk to committed rows and
    archived originals, the model already loaded as in a running daemon.
(c) the exported ONNX model's forward pass on the same images made into tensors beforehand.
(d) `YOLO("best.onnx").predict(paths, batch=16)`: Ultralytics on the ONNX export of the same weights, loaded:
    the strongest thing a user could run instead.
Workloads: `mixed`, coco128 (or coco24) repeated to -n; `phone`, the same photos made phone-like (~12 MP JPEGs with
EXIF orientation 6/8/3, bench/_data.phone_photos) repeated to --phone-n. Then, per task and workload: the
pipeline limit and one profiled (b) grouped by where the time goes (bench/_limit.py), and whole processes from a
cold start (bench/_cold.py). Each runs in a fresh process, so threads and peak RSS of one do not leak into
another. Without weights given, tiny models are trained the way the tests train them (the speed of a model does
not depend on its accuracy).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import coco_images, phone_photos  # noqa: E402

SIZES = {"detect": 640, "classify": 224}
BATCH = 16
DEVICE = {"device": "cpu"}  # --device: what every measurement runs on (set in each child too)


def _env(workdir: Path) -> None:
    os.environ.setdefault("YOLO_VERBOSE", "false")  # Ultralytics' own progress lines would bury the figures
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(workdir / "yolo-config"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ultralytics(weights: Path, paths: list[Path], imgsz: int, task: str | None = None) -> float:
    """(a) seconds for Ultralytics' own predict loop, PyTorch (on the CPU, or the GPU with --device cuda)."""
    from ultralytics import YOLO

    return _predict(YOLO(str(weights)), paths, imgsz)


def run_ultralytics_onnx(weights: Path, paths: list[Path], imgsz: int, task: str) -> float:
    """(d) seconds for Ultralytics' predict on the ONNX export of the same weights (the file coverwatch runs)."""
    from ultralytics import YOLO

    from pipeline.inference import model_loader as ml

    onnx = ml.export_onnx(ml.load_model(weights, allowed_roots=[weights.parent]), imgsz)
    return _predict(YOLO(str(onnx), task=task), paths, imgsz)


def _predict(model, paths: list[Path], imgsz: int) -> float:
    device = "cpu" if DEVICE["device"] == "cpu" else "0"
    list(model.predict([str(p) for p in paths[:BATCH]], batch=BATCH, imgsz=imgsz, device=device, verbose=False))
    t0 = time.perf_counter()
    for _ in model.predict([str(p) for p in paths], batch=BATCH, imgsz=imgsz, device=device, verbose=False,
                           stream=True):
        pass
    return time.perf_counter() - t0


def run_coverwatch(weights: Path, paths: list[Path], imgsz: int, task: str) -> float:
    """(b) seconds for `coverwatch process` on a pre-filled inbox: from files on disk to committed rows and
    archived originals (decode, inference, database, moves), the model loaded and exported, as in a running daemon."""
    import yaml

    from pipeline.report.workbook import publish_report
    from pipeline.inference.steps import Item
    from storage.db import make_engine, upgrade_database
    from watcher.config import dataset_options, load_config
    from watcher.daemon import Daemon, build_step, spare_the_collector
    from watcher.home import init_home

    home = Path(tempfile.mkdtemp(prefix=f"coverwatch-bench-home-{task}-"))
    cfg_path = init_home(home)
    raw = yaml.safe_load(cfg_path.read_text())
    raw.update(task=task)
    raw["model"].update(weights=str(weights), imgsz=imgsz, batch=BATCH, device=DEVICE["device"],
                        review_below=0.0)
    raw["watch"].update(settle_seconds=0.0)
    cfg_path.write_text(yaml.safe_dump(raw))
    for p in paths:
        shutil.copyfile(p, home / "inbox" / p.name)
    # A running daemon has its database and model ready before the first drop, and writes its Excel report once
    # an hour, not per drop (bench/report.py times the report); (a) and (c) also leave their start-up (model
    # load, session, a first run) out of the timing. The start-up is printed on its own.
    t0 = time.perf_counter()
    cfg = load_config(cfg_path)
    engine = make_engine(cfg.database_url)
    upgrade_database(engine)
    publish_report(engine, cfg.path("reports"), home=cfg.home, keep=cfg.reports.keep,  # this hour's report
                   labels=dataset_options(cfg))
    step = build_step(cfg, engine)
    step([Item(0, paths[0], "")])  # loads the model, exports it to ONNX (cached beside the weights), runs it once
    daemon = Daemon(cfg, step=step, engine=engine)
    spare_the_collector()  # as `coverwatch run` does once its daemon is built
    print(f"  (b) start-up (database, report, model, a first run), not counted: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    done = daemon.process_pending()
    seconds = time.perf_counter() - t0
    classified = done == len(paths) and not any((home / "inbox").iterdir())
    with closing(sqlite3.connect(home / "coverwatch.db")) as db:
        dups = db.execute("SELECT count(*) FROM files WHERE duplicate_of IS NOT NULL").fetchone()[0]
        boxes = db.execute("SELECT count(*) FROM detections").fetchone()[0]
    assert dups == 0, f"{dups} of the images were duplicates: (b) would not have run the model on them"
    if task == "detect":  # a 1-epoch model's box count sets the cost of NMS, in (a) as in (b): say it
        print(f"  (b) stored {boxes / len(paths):.1f} boxes per image at conf 0.25", flush=True)
    shutil.rmtree(home)
    assert classified, "some images were not classified"
    return seconds


def run_onnx(weights: Path, paths: list[Path], imgsz: int, task: str) -> float:
    """(c) seconds for the bare ONNX forward pass over the same images, letterboxed beforehand, batched by shape."""
    from pipeline.inference import model_loader as ml

    model = ml.load_model(weights, allowed_roots=[weights.parent])
    forward = ml.onnx_forward(ml.export_onnx(model, imgsz), device=DEVICE["device"])
    batches = _ready_batches(paths[:128], imgsz, task, model.stride)
    forward(batches[0])
    t0, done = time.perf_counter(), 0
    while done < len(paths):
        for batch in batches:
            forward(batch[: len(paths) - done])
            done += min(len(batch), len(paths) - done)
            if done >= len(paths):
                break
    return time.perf_counter() - t0


def _ready_batches(paths: list[Path], imgsz: int, task: str, stride: int) -> list:
    """The model calls coverwatch makes for these images, made beforehand: chunks of BATCH files in order,
    each split by input shape (ClassifyStep._forward), so (c) times the same calls (b) makes and nothing else.
    Grouping all same-shape images first would make fewer, larger calls, which on this CPU run slower per
    image (cache), and (c) would stop being the ceiling."""
    import numpy as np

    from pipeline.images.decode import decode_image
    from pipeline.images.preprocess import center_crop, letterbox, to_nchw

    calls = []
    for i in range(0, len(paths), BATCH):
        by_shape: dict[tuple, list] = {}
        for p in paths[i:i + BATCH]:
            rgb = decode_image(p.read_bytes(), max_pixels=89_478_485).rgb
            x = letterbox(rgb, imgsz, stride)[0] if task == "detect" else center_crop(rgb, imgsz)
            by_shape.setdefault(x.shape, []).append(x)
        calls.extend(to_nchw(np.stack(xs)) for xs in by_shape.values())
    return calls


def _child(queue, workdir: str, fn_name: str, args: tuple, device: str) -> None:
    _env(Path(workdir))
    DEVICE["device"] = device
    module, _, name = fn_name.rpartition(".")  # "bench._limit.profiled_run", or a run_* of this module
    fn = getattr(__import__(module, fromlist=[name]), name) if module else globals()[name]
    seconds = fn(*args)
    queue.put((seconds, _peak_rss_mb()))


def measure(workdir: Path, fn_name: str, *args) -> tuple[float, float]:
    """Run one of the run_* functions in a fresh process: (seconds, peak RSS in MB)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, str(workdir), fn_name, args, DEVICE["device"]))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _prepare_models(workdir: str, detect: bool, classify: bool) -> None:
    from tests.pipeline.conftest import train_tiny_classify, train_tiny_detect

    _env(Path(workdir))
    if detect:
        train_tiny_detect(Path(workdir) / "detect", imgsz=64, wake_imgsz=SIZES["detect"])
    if classify:
        train_tiny_classify(Path(workdir) / "classify", imgsz=32)


def prepare_models(workdir: Path, tasks: list[str], given: dict[str, Path | None]) -> dict[str, Path]:
    """Trained in a child process: training's memory would otherwise count in nobody's peak RSS but ours."""
    need = {t: given.get(t) is None for t in tasks}
    if any(need.values()):
        proc = mp.get_context("spawn").Process(target=_prepare_models,
                                               args=(str(workdir), need.get("detect", False),
                                                     need.get("classify", False)))
        proc.start()
        proc.join()
    trained = {"detect": workdir / "detect/models/det-v1/weights/best.pt",
               "classify": workdir / "classify/models/cls-v1/weights/best.pt"}
    return {t: Path(given[t]) if given.get(t) else trained[t] for t in tasks}


def inbox_of(workdir: Path, n: int, sources: list[Path], name: str = "inbox") -> list[Path]:
    """`sources` copied (not linked: the step refuses links) and repeated to n files, each copy made unique by a
    trailer after the JPEG end marker (decoders ignore it). Byte-identical copies would be recorded by (b) as
    duplicates of the first, without inference, and (b) would be timed on 128 images where (a) and (c) do n."""
    inbox = workdir / name
    inbox.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        dest = inbox / f"{i:05d}_{sources[i % len(sources)].name}"
        dest.write_bytes(sources[i % len(sources)].read_bytes() + f"#copy{i}".encode())
        paths.append(dest)
    return paths


LABELS = {"a": "(a) ultralytics predict, torch", "b": "(b) coverwatch process, drop to database row",
          "c": "(c) bare onnx forward, ready tensors", "d": "(d) ultralytics predict, onnx export"}
TARGETS = {"a": "(target >= 3)", "d": "(target >= 1.5)", "c": "(the forward pass alone: b does all the rest too)"}


def bench_task(workdir: Path, task: str, weights: Path, paths: list[Path], repeat: int, only: str = "abcd",
               workload: str = "mixed") -> dict[str, float]:
    """Rounds of (a)-(d) interleaved; the best round of each counts (the others met a busy machine).
    Returns images/s by letter."""
    imgsz, n = SIZES[task], len(paths)
    fns = {"a": "run_ultralytics", "b": "run_coverwatch", "c": "run_onnx", "d": "run_ultralytics_onnx"}
    runs = {k: [] for k in only}
    for _ in range(repeat):
        for k in only:
            runs[k].append(measure(workdir, fns[k], weights, paths, imgsz, task))
    best = {k: min(v) for k, v in runs.items()}
    print(f"\n{task} at {imgsz}, {workload} workload, {n} images, batch {BATCH}, {os.cpu_count()} CPUs, "
          f"device {DEVICE['device']}, best of {repeat} ({weights.name}, load average {os.getloadavg()[0]:.1f})")
    for k, (seconds, rss) in best.items():
        print(f"  {LABELS[k]:46s} {n / seconds:8.1f} images/s   peak RSS {rss:6.0f} MB")
    for k in "adc":
        if k in best and "b" in best:
            print(f"  b/{k} = {best[k][0] / best['b'][0]:.2f}   {TARGETS[k]}")
    return {k: n / v[0] for k, v in best.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["detect", "classify", "both"], default="both")
    p.add_argument("--workload", choices=["mixed", "phone", "both"], default="both")
    p.add_argument("-n", type=int, default=512, help="images per measurement, mixed workload")
    p.add_argument("--phone-n", type=int, default=128, help="images per measurement, phone workload")
    p.add_argument("--detect-weights", type=Path)
    p.add_argument("--classify-weights", type=Path)
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU host (PyTorch half precision for b)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each measurement is shown")
    p.add_argument("--only", default="abcd", help="which of a, b, c, d to run: `--only b -n 2000` for the peak "
                                                  "memory of coverwatch process on 2,000 images (target < 2 GB)")
    p.add_argument("--no-extras", action="store_true", help="skip the limit, the profile and the cold starts")
    args = p.parse_args(argv)
    DEVICE["device"] = args.device
    tasks = ["detect", "classify"] if args.task == "both" else [args.task]
    workloads = ["mixed", "phone"] if args.workload == "both" else [args.workload]
    with tempfile.TemporaryDirectory(prefix="coverwatch-bench-") as tmp:
        workdir = Path(tmp)
        _env(workdir)
        weights = prepare_models(workdir, tasks, {"detect": args.detect_weights,
                                                  "classify": args.classify_weights})
        for workload in workloads:
            sources = coco_images() if workload == "mixed" else phone_photos(workdir / "phone-src")
            paths = inbox_of(workdir, args.n if workload == "mixed" else args.phone_n, sources, f"inbox-{workload}")
            for task in tasks:
                before = None
                if not args.no_extras and "b" in args.only:
                    before, _ = measure(workdir, "bench._limit.cpu_costs", weights[task], paths, SIZES[task], task)
                rates = bench_task(workdir, task, weights[task], paths, args.repeat, args.only, workload)
                if not args.no_extras and "b" in rates:
                    from bench._limit import limit_and_profile

                    limit_and_profile(workdir, task, weights[task], paths, SIZES[task], rates["b"], measure, before)
            if not args.no_extras:
                from bench._cold import cold_starts

                for task in tasks:
                    cold_starts(workdir, task, weights[task], sources, SIZES[task], workload, DEVICE["device"])
            shutil.rmtree(workdir / f"inbox-{workload}")


if __name__ == "__main__":
    main()
