"""How many threads the model gets: the count that moves the most images per second, measured while working.

On a few cores, ONNX Runtime and the decode pool share the CPU. A model that is cheap next to decoding a photo
(yolo11n-cls at 224 on this 2-core machine: ~3.5 ms per image on 2 threads, ~5 ms on 1, while decoding and
resizing a coco photo costs ~6 ms) moves more images on ONE thread, which leaves the other core to decoding; a
model that is most of the cost (yolo11n at 640: ~48 ms per image on 2 threads, ~89 on 1) needs every core. Which
holds depends on the model, the photos and the machine, so it is measured: each option runs `trial` chunks in
turn, widest first, the one with the fewest seconds per image from one chunk's end to the next is kept, and the
trial is repeated after `every` chunks in case the work or the machine changed. An option whose first chunk is
`give_up` times slower than the best already tried is not tried further (yolo11n at 640 on 1 thread of 2).

    >>> chooser = ThreadChooser([2, 1])
    >>> threads = chooser.pick()                 # for this chunk
    >>> chooser.record(threads, seconds, images) # how long the chunk took, end to end

Options are thread counts, or `Plan`s: a model that can run side by side (ONNX Runtime on the CPU) is also
offered two runs at once, each on a chunk of its own with half the cores. On this machine's two cores, yolo11n
at 640 moved ~42 images/s as two one-thread runs against ~36 as one two-thread run: one run's parallel
operators wait for their slowest thread, two runs do not wait for each other.
"""

from __future__ import annotations

import logging
from statistics import median
from typing import NamedTuple

log = logging.getLogger(__name__)


class Plan(NamedTuple):
    """How the model runs: `lanes` forward passes at once, each on `threads` threads (0: the backend's own)."""

    threads: int
    lanes: int = 1

    def __str__(self) -> str:
        each = _label(self.threads)
        return each if self.lanes == 1 else f"{self.lanes} runs side by side on {each} each"


def _label(option) -> str:
    return str(option) if isinstance(option, Plan) else f"{option} thread{'s' * (option != 1)}"


class ThreadChooser:
    def __init__(self, options: list, *, trial: int = 4, every: int = 400, give_up: float = 1.3):
        self.order = sorted(set(options), reverse=True)
        self.trial, self.every, self.give_up = trial, every, give_up
        self.best = self.order[0]  # every core until measured
        self._n = 0  # chunks since the current trial began
        self._samples: dict[int, list[float]] = {}
        self._decided = False

    @property
    def _trial_chunks(self) -> int:
        return self.trial * len(self.order) if len(self.order) > 1 else 0

    def pick(self) -> int:
        if self._n < self._trial_chunks:
            return self.order[self._n // self.trial]
        return self.best

    def record(self, threads: int, seconds: float, images: int) -> None:
        if self._n < self._trial_chunks and images > 0:
            self._samples.setdefault(threads, []).append(seconds / images)
            if self._far_slower(threads):
                self._n = (self._n // self.trial + 1) * self.trial - 1  # on to the next option
        self._n += 1
        if self._n == self._trial_chunks:
            self._decide()
        if self._n >= self._trial_chunks + self.every:
            self._n = 0

    def _far_slower(self, threads: int) -> bool:
        tried = [median(v) for t, v in self._samples.items() if t != threads]
        return bool(tried) and median(self._samples[threads]) > self.give_up * min(tried)

    def _decide(self) -> None:
        speeds = {t: median(v) for t, v in self._samples.items()}
        self._samples = {}
        if not speeds:
            return
        best = min(speeds, key=speeds.get)
        if best != self.best or not self._decided:
            others = ", ".join(f"{_label(t)}: {speeds[t] * 1000:.1f} ms" for t in speeds if t != best)
            log.info("model on %s: %.1f ms per image from chunk to chunk (%s)", _label(best), speeds[best] * 1000,
                     others)
        self.best, self._decided = best, True
