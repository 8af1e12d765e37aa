"""What happens to an inbox image once it is complete. A step takes a batch and returns one outcome per item.

The ingest machinery (pipeline.intake.ingest) guarantees exactly-once bookkeeping whatever the step does; the step
only computes. The real classifier is one step; `DecodeStep` (record the decoded size) and `NoopStep` (for
benchmarks of the watcher alone) are others.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqlalchemy import insert

from pipeline.images.decode import MAX_ASPECT, DecodedImage, decode_image, open_for_reading
from pipeline.images.phash import perceptual_hash
from pipeline.errors import ModelUnavailable, Rejected
from storage.tables import Detection, Prediction


@dataclass(frozen=True, slots=True)
class Item:
    file_id: int
    path: Path
    sha256: str


@dataclass(slots=True)
class Result:
    """A finished item. Classifier fields stay None for steps that do not classify."""

    width: int | None = None
    height: int | None = None
    predicted_class: str | None = None
    confidence: float | None = None
    top5: list | None = None
    detections: list[tuple[str, float, float, float, float, float]] = field(default_factory=list)
    model_version: str | None = None
    backend: str | None = None
    imgsz: int | None = None
    decode_ms: float | None = None
    infer_ms: float | None = None
    phash: int | None = None  # the decoded image's perceptual hash (pipeline.images.phash)


Outcome = Result | Rejected | ModelUnavailable


class Step:
    """A batch of items in, one outcome per item out, in order. Subclass it: the daemon calls the methods
    below directly, and a step without a model keeps their no-op defaults."""

    model_version: str | None = None  # the model answering now, for the status line; None without one

    def __call__(self, items: list[Item]) -> list[Outcome]:
        raise NotImplementedError

    def stream(self, items: list[Item]) -> Iterator[list[Outcome]]:
        """The same outcomes in consecutive parts, in order, each as soon as it is known; this default gives
        them all at once. A step that works in chunks (the classifier) yields each chunk."""
        yield self(items)

    def model_ready(self) -> bool:
        """False while no model exists: inbox files wait as awaiting_model until it turns true."""
        return True

    def warm_up(self) -> None:
        """Start getting ready (load the model) in the background and return at once: the first call then
        finds it done or waits for it. A step without a model has nothing to do."""

    def reconfigure(self, *, conf: float, review_below: float) -> None:
        """Thresholds from a reloaded config (SIGHUP); a step without thresholds has nothing to change."""

    def close(self) -> None:
        """Free threads and the model at shutdown."""


class StreamAhead:
    """`step.stream` of each batch handed in with `add`, one call after the other on a thread of its own, up to
    `depth` parts ahead of the caller: the caller's bookkeeping of one part runs beside the step's work on the
    next, and the step goes on to the next batch without waiting for the caller to finish this one.

    Iterating gives, in order, (batch number, outcomes) for each part, (batch number, exception) when the step
    raised (the rest of that batch has no outcomes; the next batch is still called), and (batch number, None)
    once a batch is done. It ends after `end()` and the last batch. `close()` stops the thread after the part it
    is on and waits for it.

        >>> with closing(StreamAhead(step)) as feed:
        ...     feed.add(items)
        ...     for n, part in feed:
        ...         commit(part)              # ... and feed.add(next_items) or feed.end() when known
    """

    _END = object()

    def __init__(self, step: Step, *, depth: int = 1):
        self.step = step
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._parts: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._drive, name="step-stream", daemon=True)
        self._worker.start()

    def add(self, items: list[Item]) -> None:
        self._calls.put(items)

    def end(self) -> None:
        """No batch after the ones added."""
        self._calls.put(self._END)

    def __iter__(self) -> Iterator[tuple[int, list[Outcome] | BaseException | None]]:
        while True:
            entry = self._parts.get()
            if entry is self._END:
                return
            yield entry

    def close(self) -> None:
        self._stop.set()  # the thread ends after the part it is on
        self._calls.put(self._END)
        self._worker.join()

    def _drive(self) -> None:
        n = 0
        while not self._stop.is_set():
            items = self._calls.get()
            if items is self._END:
                _put(self._parts, self._END, self._stop)
                return
            try:
                parts_of = self.step.stream(items) if items else iter(())
                try:
                    for part in parts_of:
                        if not _put(self._parts, (n, part), self._stop):
                            return
                finally:
                    if hasattr(parts_of, "close"):
                        parts_of.close()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
                if not _put(self._parts, (n, exc), self._stop):
                    return
            if not _put(self._parts, (n, None), self._stop):
                return
            n += 1


def _put(parts: queue.Queue, entry, stop: threading.Event) -> bool:
    """Hand `entry` over unless the caller left; False when it did."""
    while not stop.is_set():
        try:
            parts.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def store_results(s, results: list[tuple[int, Result]]) -> None:
    """A Prediction row per (file id, result), and its boxes, through the tables' INSERTs on the session's
    connection: one executemany for the predictions (with RETURNING their ids, in order, when there are boxes)
    and one for every box, without the ORM's per-object bookkeeping (two thirds of the commit at ~200 boxes
    per image, and a third of storing a chunk's 16 predictions)."""
    if not results:
        return
    table = Prediction.__table__
    rows = [{"file_id": file_id, "model_version": r.model_version, "backend": r.backend, "imgsz": r.imgsz,
             "predicted_class": r.predicted_class, "confidence": r.confidence, "top5": r.top5, "width": r.width,
             "height": r.height, "decode_ms": r.decode_ms, "infer_ms": r.infer_ms} for file_id, r in results]
    conn = s.connection()
    if not any(r.detections for _, r in results):
        conn.execute(insert(table), rows)
        return
    ids = conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).scalars().all()
    _insert_boxes(conn, [(pid, *box) for pid, (_, r) in zip(ids, results) for box in r.detections])


_BOX_COLUMNS = ("prediction_id", "class_name", "confidence", "x1", "y1", "x2", "y2")
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # a positional placeholder, by DB-API paramstyle


def _insert_boxes(conn, boxes: list[tuple]) -> None:
    """Every box of a chunk (prediction id, class, score, x1, y1, x2, y2) in one executemany of plain tuples
    through the driver (sqlite3, psycopg): at ~200 boxes per image, a parameter dict per box and SQLAlchemy's
    processing of each were most of the commit. A driver with named placeholders goes through the table's
    INSERT."""
    mark = _MARKS.get(conn.dialect.paramstyle)
    if mark is None:
        conn.execute(insert(Detection.__table__), [dict(zip(_BOX_COLUMNS, b)) for b in boxes])
        return
    conn.exec_driver_sql(f"INSERT INTO {Detection.__tablename__} ({', '.join(_BOX_COLUMNS)}) "
                         f"VALUES ({', '.join([mark] * len(_BOX_COLUMNS))})", boxes)


def read_file(path: Path) -> bytes:
    """Read a whole regular file without following links (see pipeline.images.decode.open_for_reading)."""
    import os

    fd = open_for_reading(path)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode_batch(items: list[Item], *, max_pixels: int, pool: ThreadPoolExecutor, max_aspect: float = MAX_ASPECT
                 ) -> list[tuple[DecodedImage, int] | Rejected]:
    """Decode in a thread pool (Pillow releases the GIL while decoding), each image with its perceptual hash;
    failures come back as Rejected."""

    def one(item: Item) -> tuple[DecodedImage, int] | Rejected:
        try:
            img = decode_image(read_file(item.path), max_pixels=max_pixels, max_aspect=max_aspect)
        except Rejected as exc:
            return exc
        return img, perceptual_hash(img.rgb)

    return list(pool.map(one, items))


class DecodeStep(Step):
    """Decode safely and record the image size and hash: the step before any model exists."""

    def __init__(self, max_pixels: int, workers: int = 2, max_aspect: float = MAX_ASPECT):
        self.max_pixels, self.max_aspect = max_pixels, max_aspect
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def __call__(self, items: list[Item]) -> list[Outcome]:
        t0 = time.perf_counter()
        decoded = decode_batch(items, max_pixels=self.max_pixels, pool=self.pool, max_aspect=self.max_aspect)
        ms = (time.perf_counter() - t0) * 1000 / max(1, len(items))
        return [d if isinstance(d, Rejected) else Result(width=d[0].width, height=d[0].height, decode_ms=ms, phash=d[1])
                for d in decoded]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class NoopStep(Step):
    """Does nothing: measures the watcher and the bookkeeping alone."""

    def __call__(self, items: list[Item]) -> list[Outcome]:
        return [Result() for _ in items]
