"""The honest limit of (b), and one profiled (b): bench/throughput.py calls `limit_and_profile` per task and workload.

Limit: the CPU time per image of decode + preprocess alone (one thread, as a decode thread does it) and of the
forward pass alone (the cheapest of the thread counts the step offers), on the same images in the same run,
measured before and after the rounds of (a)-(d), the cheaper of the two counting.
A pipeline that did nothing else, with every core busy, would move cores / (decode + forward) images per
second; (b) is printed as a fraction of that (target >= 0.85).

Profile: one (b) with the pipeline's stages wrapped, summing per stage the wall time of its calls and the CPU
time of the thread that made them: read+hash, decode, phash, stacking, forward, NMS (and the answers),
database, moves. The stages run in different threads at once (that is the point of the pipeline), so wall
times overlap; CPU times add up to the process's, less what is not wrapped (the "rest"), and what no thread
used is printed as idle (cores x wall - CPU). ONNX Runtime's own worker threads are not a Python thread's
CPU: the forward pass on 2 threads shows about half its CPU.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

SAMPLE = 96  # images for the CPU costs


def limit_and_profile(workdir: Path, task: str, weights: Path, paths: list[Path], imgsz: int, b_rate: float,
                      measure, before: tuple[float, float, str] | None = None) -> None:
    """`before`: cpu_costs measured before the rounds of (a)-(d); the cheaper of it and a second measurement
    now counts, for each of decode and forward (after Ultralytics' runs, whose peak RSS reaches several GB,
    the same work has been seen to cost up to twice the CPU for a while)."""
    (decode_ms, forward_ms, detail), _ = measure(workdir, "bench._limit.cpu_costs", weights, paths, imgsz, task)
    if before is not None:
        if before[0] + before[1] < decode_ms + forward_ms:
            detail = before[2]
        decode_ms, forward_ms = min(decode_ms, before[0]), min(forward_ms, before[1])
    cores = os.cpu_count() or 1
    limit = cores * 1000 / (decode_ms + forward_ms)
    print(f"  limit: decode+preprocess {decode_ms:.1f} ms CPU per image, forward {forward_ms:.1f} ms CPU per "
          f"image ({detail}); {cores} cores / {decode_ms + forward_ms:.1f} ms = {limit:.1f} images/s")
    print(f"  b / limit = {b_rate / limit:.2f}   (target >= 0.85)")
    (stages, wall, cpu), _ = measure(workdir, "bench._limit.profiled_run", weights, paths, imgsz, task)
    idle = cores * wall - cpu
    print(f"  profile of one (b): {wall:.2f} s wall, {cpu:.2f} s CPU in the process, {idle:.2f} core-seconds "
          f"idle ({100 * idle / (cores * wall):.0f}% of {cores} cores)")
    for name, (w, c, calls) in stages.items():
        print(f"    {name:12s} {w:7.2f} s wall  {c:7.2f} s CPU  ({calls} calls)")
    print(f"    {'rest':12s} {'':7s}   {'':4s}  {cpu - sum(c for _, c, _ in stages.values()):7.2f} s CPU  "
          "(not wrapped: Python between the stages, ONNX Runtime's own threads show here)")


def cpu_costs(weights: Path, paths: list[Path], imgsz: int, task: str) -> tuple[float, float, str]:
    """(decode ms, forward ms, a note) of CPU time per image, on the first SAMPLE distinct images."""
    import numpy as np

    from pipeline.images.preprocess import center_crop, decode_for_model, letterbox, to_nchw
    from pipeline.inference import model_loader as ml
    from pipeline.inference.steps import read_file

    model = ml.open_model(weights, allowed_roots=[weights.parent], imgsz=imgsz, backend="onnx", device="cpu",
                          spare_threads=2)
    sample = paths[:SAMPLE]
    inputs, t0 = [], time.thread_time()
    for p in sample:
        image = decode_for_model(read_file(p), max_pixels=89_478_485, task=task, imgsz=imgsz)
        inputs.append(letterbox(image.rgb, imgsz, model.stride)[0] if task == "detect" else
                      center_crop(image.image, imgsz))
    decode_ms = (time.thread_time() - t0) * 1000 / len(sample)
    batches = []
    for i in range(0, len(inputs), 16):  # the step's calls: chunks of 16, one run per input shape
        by_shape: dict = {}
        for x in inputs[i:i + 16]:
            by_shape.setdefault(x.shape, []).append(x)
        batches += [to_nchw(np.stack(xs)) for xs in by_shape.values()]
    per_thread = {}
    for threads in model.threads:
        model.forward(batches[0], threads)
        c0, w0 = time.process_time(), time.perf_counter()
        for b in batches:
            model.forward(b, threads)
        per_thread[threads] = ((time.process_time() - c0) * 1000 / len(sample),
                               (time.perf_counter() - w0) * 1000 / len(sample))
    best = min(per_thread, key=lambda t: per_thread[t][0])
    note = ", ".join(f"{t} thread{'s' * (t != 1)}: {c:.1f} ms CPU, {w:.1f} ms wall" for t, (c, w) in per_thread.items())
    return decode_ms, per_thread[best][0], note


class _Stages:
    def __init__(self):
        self.lock = threading.Lock()
        self.totals: dict[str, list] = {}

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self.lock:
            t = self.totals.setdefault(name, [0.0, 0.0, 0])
            t[0] += wall
            t[1] += cpu
            t[2] += 1

    def wrap(self, module, attr: str, name: str) -> None:
        fn = getattr(module, attr)

        def timed(*a, **kw):
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - w0, time.thread_time() - c0)

        setattr(module, attr, timed)

    def wrap_scope(self, module, attr: str, name: str) -> None:
        scope = getattr(module, attr)

        @contextlib.contextmanager
        def timed(*a, **kw):
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                with scope(*a, **kw) as s:
                    yield s
            finally:
                self.add(name, time.perf_counter() - w0, time.thread_time() - c0)

        setattr(module, attr, timed)


def profiled_run(weights: Path, paths: list[Path], imgsz: int, task: str) -> tuple[dict, float, float]:
    """One (b) with its stages timed: (stages, wall seconds, process CPU seconds)."""
    from bench.throughput import run_coverwatch
    from pipeline.inference import classify, model_loader
    from pipeline.intake import core, ingest

    stages = _Stages()
    stages.wrap(core, "sha256_file", "read+hash")
    stages.wrap(classify, "read_file", "read+hash")
    for attr in ("decode_for_model", "letterbox", "center_crop"):
        stages.wrap(classify, attr, "decode")
    stages.wrap(classify, "perceptual_hash", "phash")  # of the decoded image, for near-duplicates
    stages.wrap(classify, "to_nchw", "stacking")  # uint8 HWC images -> one float NCHW batch
    stages.wrap(model_loader.YoloModel, "forward", "forward")
    for attr in ("nms_rows", "e2e_rows", "detect_answer", "classify_answer"):
        stages.wrap(classify, attr, "NMS")
    stages.wrap_scope(ingest, "session_scope", "database")  # register and commit, with their transactions
    stages.wrap(ingest, "move", "moves")  # renames into archive/ and the transaction that records them
    from watcher.daemon import Daemon

    process_pending, cpu = Daemon.process_pending, [0.0]

    def timed(self, *a, **kw):  # what (b) times: the start-up and its first run are left out, as there
        stages.totals.clear()
        c0 = time.process_time()
        try:
            return process_pending(self, *a, **kw)
        finally:
            cpu[0] = time.process_time() - c0

    Daemon.process_pending = timed
    wall = run_coverwatch(weights, paths, imgsz, task)
    return {k: tuple(v) for k, v in stages.totals.items()}, wall, cpu[0]
