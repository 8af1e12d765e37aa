"""The one boundary between the classifier step and a model: an NCHW float batch in, the raw output rows out.

`pipeline.inference.model_loader.open_model` makes the real ones (ONNX Runtime on an export cached beside the weights, or
PyTorch); `FakeModel` is shipped beside them, as httpx ships its MockTransport, so that batching, thread choice,
review copies and hot swaps are tested without weights, torch or Ultralytics:

    >>> model = FakeModel(names=["comic", "novel"], task="classify", answer=[0.9, 0.1])
    >>> step = ClassifyStep(..., open_model=lambda weights: model)
    >>> step(items_18)                 # batch=16: a first chunk of 2 (classify.FIRST_CHUNK), then 16
    >>> model.calls                    # (images, threads) per forward; 0: the backend's own thread count
    [(2, 0), (16, 0)]

Rows are what the network gives: classify, softmax probabilities per class (the step calibrates them with the
model's `temperature`, pipeline.inference.calibration); detect, (4 + classes, anchors) of
xywh boxes in input pixels and class scores (Ultralytics' head before NMS), or with `end2end` (YOLO26) up to
max_det rows of x1, y1, x2, y2, score, class.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np


class Model(Protocol):
    names: list[str]  # class names by class id
    task: str  # detect | classify
    imgsz: int  # the input size it was made for
    stride: int  # detect: input sides are padded to a multiple of it
    end2end: bool  # detect: rows come out already suppressed, (max_det, 6)
    backend: str  # recorded in every Result: onnx | torch | ...
    version: str  # the version rows name when the registry gives none
    source: str  # where it was loaded from, for messages
    threads: tuple[int, ...]  # the thread counts `forward` can run on, widest first (pipeline.inference.threads picks)
    lanes: int  # how many `forward` calls may run at once (from different threads); 1: one at a time
    temperature: float  # classify: confidences are softmax(log p / temperature); 1.0 leaves them as they are
    plan_file: Path | None  # where the thread plan measured for it is kept (pipeline.inference.threads.PlanMemory)

    def forward(self, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, 3, H, W) float32 in 0..1 -> N output rows; `threads`: one of `threads` (None: the first)."""
        ...

    def close(self) -> None: ...


Answer = Callable[[np.ndarray], "np.ndarray | Sequence[float]"]


class FakeModel:
    """A deterministic `Model` for tests: each image's row is `answer(image)` ((3, H, W) float32 in 0..1), or
    `answer` itself when it is a fixed row (classify probabilities, say).

    `threads` are the counts it offers, `lanes` how many forwards may run at once, `seconds` how long one
    image takes on each thread count (to steer pipeline.inference.threads), `plan_file` where its plan is
    kept; every forward is recorded in `calls` as (images, threads) and in `spans` as [images, start, end]
    (perf_counter), every input shape in `shapes`, and `most_at_once` is the most forwards that overlapped.
    """

    def __init__(self, *, names: list[str], task: str = "classify", answer: Answer | Sequence[float],
                 imgsz: int = 64, stride: int = 32, end2end: bool = False, version: str = "fake@000000000000",
                 backend: str = "fake", threads: Sequence[int] = (0,), seconds: dict[int, float] | None = None,
                 temperature: float = 1.0, lanes: int = 1, plan_file: Path | None = None):
        self.names, self.task, self.imgsz, self.stride, self.end2end = list(names), task, imgsz, stride, end2end
        self.temperature, self.plan_file = temperature, plan_file
        self.version, self.backend, self.source = version, backend, f"fake model {version}"
        self.threads, self.lanes = tuple(sorted(set(threads), reverse=True)), lanes
        self._answer, self._seconds = answer, seconds or {}
        self.calls: list[tuple[int, int | None]] = []
        self.spans: list[list] = []  # [images, start, end] of each forward, in the order they started
        self.shapes: list[tuple[int, ...]] = []
        self.closed = False
        self.most_at_once, self._running = 0, 0
        self._lock = threading.Lock()

    def forward(self, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
        if self.closed:
            raise RuntimeError(f"{self.source} was closed")
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype != np.float32:
            raise ValueError(f"expected an (N, 3, H, W) float32 batch, got {batch.shape} {batch.dtype}")
        if threads is not None and threads not in self.threads:
            raise ValueError(f"{self.source} offers {self.threads} threads, not {threads}")
        with self._lock:
            self.calls.append((len(batch), threads))
            self.shapes.append(batch.shape)
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
            span = [len(batch), time.perf_counter(), None]
            self.spans.append(span)
        try:
            time.sleep(self._seconds.get(self.threads[0] if threads is None else threads, 0.0) * len(batch))
        finally:
            with self._lock:
                self._running -= 1
                span[2] = time.perf_counter()
        answer = self._answer
        rows = [answer(x) if callable(answer) else answer for x in batch]
        return np.stack([np.asarray(r, dtype=np.float32) for r in rows])

    def close(self) -> None:
        self.closed = True
