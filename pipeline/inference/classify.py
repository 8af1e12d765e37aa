"""The classifier step: every inbox image through a YOLO model (detect or classify), in batches.

    >>> step = ClassifyStep(task="detect", weights="yolo11n.pt", imgsz=640, batch=16, conf=0.25, backend="auto",
    ...                     device="auto", review_dir=home / "review", review_below=0.4,
    ...                     max_pixels=89_478_485, allowed_roots=[home / "models"], model_source=champion)
    >>> step([Item(7, home / "inbox/cover.jpg", sha)])
    [Result(width=1200, height=1800, predicted_class='comic', confidence=0.91, top5=[['comic', 0.91], ...], ...)]

Per call: ask `model_source` once and switch models first if the champion changed (so every row names the model
that produced it); then decode chunk k+1 in the thread pool while the model runs on chunk k (or, when the
chooser measures it faster, run chunks k and k+1 side by side: pipeline.inference.threads.Plan). The model is a
`pipeline.inference.model_io.Model`, opened by `pipeline.inference.model_loader.open_model` (ONNX Runtime on CPU, PyTorch on CUDA) or
by the `open_model` given (tests pass `pipeline.inference.model_io.FakeModel`s): nothing below depends on which.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.inference import model_loader as ml
from pipeline.inference.calibration import apply_temperature
from pipeline.images.decode import MAX_ASPECT, open_for_reading
from pipeline.images.phash import perceptual_hash
from pipeline.errors import ModelUnavailable, Rejected
from pipeline.inference.boxes import Answer, classify_answer, detect_answer, e2e_rows, nms_rows
from pipeline.inference.model_io import Model
from pipeline.images.preprocess import ModelImage, center_crop, decode_for_model, letterbox, to_nchw
from pipeline.inference.review import write_review
from pipeline.inference.steps import Item, Outcome, Result, Step, read_file
from pipeline.inference.threads import Plan, PlanMemory, ThreadChooser

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0  # a model that failed to load is tried again after this, not on every batch
# Decoding the next chunk runs beside inference. At equal priority it preempts the inference threads, and one
# late thread stalls every parallel operator of the model; a little lower, it fills the gaps the model leaves.
DECODE_NICENESS = 10
MAX_LANES = 2  # forward passes at once, at most (pipeline.inference.threads.Plan)
# The first chunk of a call is this small: its rows are committed after 2 images' forward pass, not 16 (the
# first committed row of a cold `coverwatch process`: detect on phone photos 1.16 s with 4, 1.05 with 2, 1.01
# with 1, medians of 4; 2 keeps both decode threads busy), and the chunks after it are the full batch.
FIRST_CHUNK = 2
# Two runs side by side: the last chunk of a call in quarters, so that both end together (ClassifyStep._chunks).
TAIL_PIECES = 4

ModelSource = Callable[[], "tuple[str, Path] | None"]
OpenModel = Callable[[Path | str], Model]  # weights -> model; raises ModelUnavailable


@dataclass(frozen=True)
class _Active:
    want: tuple  # (registry version or None, weights) it was loaded for
    version: str
    model: Model
    plans: ThreadChooser  # which of `model_plans(model)` runs the next chunk


@dataclass(frozen=True, slots=True)
class _Prepared:
    x: np.ndarray  # HxWx3 uint8, model input size
    image: ModelImage  # rgb dropped (None) once the input is made
    geometry: tuple | None  # detect: gain_x, gain_y, pad_x, pad_y, decoded width, decoded height
    decode_ms: float
    phash: int  # of the decoded (drafted) image, before the crop: the whole cover


class ClassifyStep(Step):
    """Classify inbox images; a `pipeline.inference.steps.Step`. Call `close()` when done (the daemon does).

    `weights`: a .pt path or a pretrained name (downloaded into the first folder of `allowed_roots` when online);
    `model_source()` -> (version, weights path) or None: the registry's champion, preferred over `weights`;
    `allowed_roots`: the only places weights load from; `review_dir=None` turns review copies off, and
    `review_below=1.0` sends every image there; `workers`: decode threads (default: `decode_workers`); `open_model(weights)`: the model
    (default: `pipeline.inference.model_loader.open_model` with these settings).
    """

    def __init__(self, *, task: str, weights: str | Path, imgsz: int, batch: int, conf: float, backend: str = "auto",
                 device: str = "auto", review_dir: Path | None, review_below: float, max_pixels: int,
                 allowed_roots: list[Path], model_source: ModelSource | None = None, workers: int | None = None,
                 clock: Callable[[], float] = time.monotonic, max_aspect: float = MAX_ASPECT,
                 open_model: OpenModel | None = None):
        self.task, self.weights, self.imgsz, self.batch, self.conf = task, weights, imgsz, max(1, batch), conf
        self.backend, self.device = backend, device
        self.review_dir, self.review_below, self.max_pixels = review_dir, review_below, max_pixels
        self.max_aspect = max_aspect
        self.allowed_roots = [Path(r) for r in allowed_roots]
        self.model_source, self.clock = model_source, clock
        self.workers = workers = workers or decode_workers(device)
        self.open_model = open_model or self._open_yolo
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="classify-decode",
                                       initializer=_lower_priority, initargs=(DECODE_NICENESS,))
        # One writer: review copies claim names and write classes.txt, which two writers at once would race.
        self.review_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify-review",
                                              initializer=_lower_priority, initargs=(DECODE_NICENESS,))
        # The forward passes (and their answers) run here, up to MAX_LANES at once when the plan says so.
        self.lane_pool = ThreadPoolExecutor(max_workers=MAX_LANES, thread_name_prefix="classify-forward")
        self._active: _Active | None = None
        self._failed: dict[tuple, tuple[float, ModelUnavailable]] = {}
        self._choosing = threading.Lock()  # one model load at a time: a call during the warm-up waits for it

    def __call__(self, items: list[Item]) -> list[Outcome]:
        return [o for part in self.stream(items) for o in part]

    def stream(self, items: list[Item]) -> Iterator[list[Outcome]]:
        """The outcomes a chunk of `batch` items at a time, as each chunk's forward pass ends: the caller's
        bookkeeping of one chunk then runs beside the forward pass of the next (pipeline.intake.ingest)."""
        if not items:
            return
        try:
            active = self._model_for_call()
        except ModelUnavailable as exc:
            yield [exc for _ in items]
            return
        yield from self._run(active, items)

    def load(self) -> str:
        """Load the model now, e.g. to fail early at start-up (raises ModelUnavailable); returns its version.

        Optional: the first call loads it anyway.
        """
        return self._model_for_call().version

    def warm_up(self) -> None:
        """Load the model on one of the forward lanes (idle until the first chunk) while the caller carries
        on; a failure is logged there once and the files wait for the model, as on a first call."""
        self.lane_pool.submit(self._warm)

    def _warm(self) -> None:
        try:
            self._model_for_call()
        except ModelUnavailable:
            pass

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.lane_pool.shutdown(wait=True)
        self.review_pool.shutdown(wait=True)
        if self._active is not None:
            self._active.model.close()

    @property
    def model_version(self) -> str | None:
        return self._active.version if self._active is not None else None

    def model_ready(self) -> bool:
        """Is there a model to use (loaded, a champion in the registry, or weights on disk)? The daemon offers
        `awaiting_model` files again when this turns true."""
        if self._active is not None:
            return True
        version, weights = self._wanted()
        return version is not None or Path(weights).is_file()

    def reconfigure(self, *, conf: float, review_below: float) -> None:
        """Thresholds from a reloaded config (SIGHUP); the model stays loaded."""
        self.conf, self.review_below = conf, review_below

    # -- which model -------------------------------------------------------------------------------------

    def _model_for_call(self) -> _Active:
        with self._choosing:
            return self._choose()

    def _choose(self) -> _Active:
        want = self._wanted()
        if self._active is not None and self._active.want == want:
            return self._active
        failed = self._failed.get(want)
        if failed is not None and self.clock() - failed[0] < RETRY_SECONDS:
            return self._keep_or_raise(failed[1])
        try:
            active = self._load(want)
        except ModelUnavailable as exc:
            self._failed[want] = (self.clock(), exc)
            log.warning("%s", exc)
            return self._keep_or_raise(exc)
        self._failed.pop(want, None)
        self._active = active
        log.info("classifying with model %s (%s, %d classes, %s)", active.version, active.model.task,
                 len(active.model.names), active.model.backend)
        return active

    def _keep_or_raise(self, exc: ModelUnavailable) -> _Active:
        if self._active is None:
            raise exc
        return self._active  # a new champion that cannot load must not stop the one that works

    def _wanted(self) -> tuple:
        if self.model_source is not None:
            try:
                got = self.model_source()
            except Exception:  # noqa: BLE001 - the registry being unreachable is no reason to stop classifying
                log.warning("asking for the champion model failed; keeping the current one", exc_info=True)
                if self._active is not None:
                    return self._active.want
                got = None
            if got is not None:
                return str(got[0]), Path(got[1])
        return None, self.weights

    def _load(self, want: tuple) -> _Active:
        version, weights = want
        model = self.open_model(weights)
        if model.task != self.task:
            log.warning("task is %s but %s is a %s model; using the model's task", self.task, model.source, model.task)
        memory = PlanMemory(model.plan_file) if model.plan_file is not None else None
        return _Active(want, version or model.version, model, ThreadChooser(model_plans(model), memory=memory))

    def _open_yolo(self, weights: Path | str) -> Model:
        folders = [r for r in self.allowed_roots if r.is_dir()]
        # Leave the decode pool its cores as one option: pipeline.inference.threads measures which moves more images.
        return ml.open_model(weights, allowed_roots=self.allowed_roots, imgsz=self.imgsz, backend=self.backend,
                             device=self.device, spare_threads=self.workers,
                             download_dir=folders[0] if folders else None)

    # -- the work ----------------------------------------------------------------------------------------

    def _run(self, active: _Active, items: list[Item]) -> Iterator[list[Outcome]]:
        """Chunks through decode (the pool, ahead) and the forward pass (the lanes, `plan.lanes` at once),
        their outcomes yielded in order as each chunk's forward pass ends. A chunk's review copies are written
        beside the next chunk's work (their sources opened already: the caller archives the files next), and a
        chunk is yielded only once the copies of the chunk before it are written: a backlog of one chunk."""
        chunks = self._chunks(active.model, items)
        decoding: dict[int, list[Future]] = {}
        running: deque[tuple[Plan, int, Future]] = deque()  # (plan, images, outcomes), oldest first
        copies: list[list[Future]] = []  # each chunk's review copies, in chunk order
        clock = {"ended": 0.0, "done": 0, "ends": {}}  # "ends": when each forward future ended
        yielded = 0

        def hand_over(outcomes: list[Outcome]) -> list[Outcome]:
            """The next chunk in order, once the copies of the chunk before it are written."""
            nonlocal yielded
            if yielded:
                wait(copies[yielded - 1])
            yielded += 1
            return outcomes

        try:
            for k, chunk in enumerate(chunks):
                finished = []  # room for this chunk's forward pass; each end measured before the next pick
                while True:
                    while running and running[0][2].done():  # the ended ones, in order
                        finished.append(self._finished(active, running.popleft(), clock))
                    # The first chunk of a call on every core, alone: its rows come soonest (a cold start).
                    plan = active.plans.pick() if k else active.plans.order[0]
                    busy = [(p, f) for p, _, f in running if not f.done()]
                    if sum(_cores(p) for p, _ in busy) + _cores(plan) <= _cores(plan) * plan.lanes:
                        break
                    # A run that is free takes the next chunk, even while an older one still runs beside it
                    # (the last chunk's quarters beside a whole chunk); outcomes still go out in order.
                    wait([f for _, f in busy], return_when=FIRST_COMPLETED)
                for j in range(k, min(len(chunks), k + plan.lanes + 1)):  # decode ahead of the forward passes
                    if j not in decoding:
                        decoding[j] = self._submit(active, chunks[j])
                if finished and not yielded:  # the call's first rows go out now, not once this chunk is decoded
                    yield from (hand_over(done) for done in finished)
                    finished = []
                prepared = [f.result() for f in decoding.pop(k)]
                copies.append([])
                future = self.lane_pool.submit(self._infer, active, chunk, prepared, plan.threads, copies[-1])
                future.add_done_callback(lambda f: clock["ends"].setdefault(f, time.perf_counter()))
                running.append((plan, len(chunk), future))
                yield from (hand_over(done) for done in finished)
            while running:
                yield hand_over(self._finished(active, running.popleft(), clock))
        finally:
            for futures in decoding.values():  # left early: what has not started does not start
                for f in futures:
                    f.cancel()
            wait([f for _, _, f in running])
            for f in wait([f for chunk in copies for f in chunk]).done:  # every copy of the call is on disk
                if f.exception() is not None:
                    log.error("review copy failed", exc_info=f.exception())

    def _chunks(self, model: Model, items: list[Item]) -> list[list[Item]]:
        """A small first chunk (FIRST_CHUNK), then `batch` at a time. A model that runs side by side gets its
        last chunk in TAIL_PIECES pieces: started while the chunk before it still runs, a whole chunk would
        end on one core while the other waits."""
        first = min(self.batch, FIRST_CHUNK)
        chunks = [items[:first]] + [items[i:i + self.batch] for i in range(first, len(items), self.batch)]
        if model.lanes > 1 and len(chunks) > 2:
            last = chunks.pop()
            size = -(-len(last) // TAIL_PIECES)
            chunks += [last[i:i + size] for i in range(0, len(last), size)]
        return chunks

    @staticmethod
    def _finished(active: _Active, entry: tuple[Plan, int, Future], clock: dict) -> list[Outcome]:
        """A chunk's outcomes, once its forward pass ends; the time since the chunk before it ended goes to the
        chooser. The first chunk of a call waits for its whole decode: only the chunks after it show the pace."""
        plan, images, future = entry
        outcomes = future.result()
        ended, started = clock["ends"].pop(future, time.perf_counter()), clock["ended"]
        if clock["done"]:  # one that ended before the chunk ahead of it: its images took no extra time
            active.plans.record(plan, max(0.0, ended - started), images)
        clock["ended"], clock["done"] = max(ended, started), clock["done"] + 1
        return outcomes

    def _submit(self, active: _Active, chunk: list[Item]) -> list[Future]:
        m = active.model
        return [self.pool.submit(self._prepare, m.task, m.stride, item) for item in chunk]

    def _prepare(self, task: str, stride: int, item: Item) -> _Prepared | Rejected | Exception:
        t0 = time.perf_counter()
        try:
            image = decode_for_model(read_file(item.path), max_pixels=self.max_pixels, task=task, imgsz=self.imgsz,
                                     max_aspect=self.max_aspect)
            if task == "detect":
                rgb = image.rgb
                x, geometry = letterbox(rgb, self.imgsz, stride)
                geometry = (*geometry, rgb.shape[1], rgb.shape[0])
                phash = perceptual_hash(rgb)
            else:
                x, geometry = center_crop(image.image, self.imgsz), None
                phash = perceptual_hash(image.image)
        except Rejected as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one odd file must not sink its batch; ingest retries it
            log.exception("preparing %s failed", item.path)
            return exc
        image = ModelImage(None, image.width, image.height, image.orientation)  # free the full-size pixels now
        return _Prepared(x, image, geometry, (time.perf_counter() - t0) * 1000, phash)

    def _infer(self, active: _Active, chunk: list[Item], prepared: list, threads: int, reviews: list[Future]
               ) -> list[Outcome]:
        outcomes = list(prepared)
        ok = [i for i, p in enumerate(prepared) if isinstance(p, _Prepared)]
        if not ok:
            return outcomes
        t0 = time.perf_counter()
        try:
            y = self._forward(active.model, threads, {i: prepared[i].x for i in ok})
            answers = [self._answer(active.model, y[i], prepared[i]) for i in ok]
        except Exception as exc:  # noqa: BLE001 - the chunk is retried by the ingest, the rest carries on
            log.exception("inference failed on %d images", len(ok))
            return [exc if isinstance(p, _Prepared) else p for p in prepared]
        infer_ms = (time.perf_counter() - t0) * 1000 / len(ok)
        for i, answer in zip(ok, answers):
            outcomes[i] = self._result(active, chunk[i], prepared[i], answer, infer_ms, reviews)
        return outcomes

    @staticmethod
    def _forward(model: Model, threads: int, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """One model run per input shape (letterboxed photos of one aspect ratio share a shape)."""
        groups: dict[tuple, list[int]] = {}
        for i, x in inputs.items():
            groups.setdefault(x.shape, []).append(i)
        out = {}
        for idx in groups.values():
            out.update(zip(idx, model.forward(to_nchw(np.stack([inputs[i] for i in idx])), threads)))
        return out

    def _answer(self, model: Model, y: np.ndarray, p: _Prepared) -> Answer:
        if model.task == "classify":
            return classify_answer(apply_temperature(y, model.temperature), model.names)
        rows = e2e_rows(y, self.conf) if model.end2end else nms_rows(y, self.conf, len(model.names))
        return detect_answer(rows, p.geometry, model.names)

    def _result(self, active: _Active, item: Item, p: _Prepared, a: Answer, infer_ms: float,
                reviews: list[Future]) -> Result:
        if self.review_dir is not None and (a.confidence is None or a.confidence < self.review_below
                                            or self.review_below >= 1.0):  # 1.0: review everything
            # In a thread of its own, beside the next forward pass: a copy (or, turned upright, a re-encode) of a
            # phone photo costs as much as classifying it. The source is opened here, before the chunk is handed
            # over and its files archived: an open file is still read whole after its name is moved.
            try:
                source = os.fdopen(open_for_reading(item.path), "rb")  # write_review reads and closes it
            except (OSError, Rejected) as exc:
                log.warning("review copy of %s not written: %s", item.path.name, exc)
            else:
                reviews.append(self.review_pool.submit(
                    write_review, self.review_dir, item.path, names=active.model.names, boxes=a.boxes,
                    orientation=p.image.orientation, version=active.version, opened=source))
        return Result(width=p.image.width, height=p.image.height, predicted_class=a.predicted_class,
                      confidence=a.confidence, top5=a.top5, detections=a.detections, model_version=active.version,
                      backend=active.model.backend, imgsz=self.imgsz, decode_ms=p.decode_ms, infer_ms=infer_ms,
                      phash=p.phash)


def _cores(plan: Plan) -> int:
    """The cores one run of `plan` takes (0, the backend's own count: one run at a time)."""
    return max(1, plan.threads)


def model_plans(model: Model) -> list[Plan]:
    """One run at a time on each thread count the model offers; a model that can run side by side
    (`model.lanes` > 1) also two runs at once on its fewest threads each."""
    plans = [Plan(t) for t in model.threads]
    fewest = min(model.threads)
    if model.lanes > 1 and fewest > 0:
        plans.append(Plan(fewest, min(model.lanes, MAX_LANES)))
    return plans


def decode_workers(device: str) -> int:
    """Two decode threads beside a CPU model (the cores are shared with it); on a GPU, decoding is the work of
    the CPU: one thread per core, up to 8, keep the GPU fed."""
    from pipeline.inference.device import resolve_device

    return 2 if resolve_device(device) == "cpu" else max(2, min(8, os.cpu_count() or 2))


def _lower_priority(niceness: int) -> None:
    """Lower the calling thread's priority (Linux schedules threads one by one); elsewhere, nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
