"""How many threads the model gets: the count that moves the most images per second, measured while working.

On a few cores, ONNX Runtime and the decode pool share the CPU. A model that is cheap next to decoding a photo
(yolo11n-cls at 224 on this 2-core machine: ~3.5 ms per image on 2 threads, ~5 ms on 1, while decoding and
resizing a coco photo costs ~6 ms) moves more images on ONE thread, which leaves the other core to decoding; a
model that is most of the cost (yolo11n at 640: ~48 ms per image on 2 threads, ~89 on 1) needs every core. Which
holds depends on the model, the photos and the machine, so it is measured: each option runs `trial` chunks in
turn, widest first, the one with the fewest seconds per image from one chunk's end to the next is kept, and the
trial is repeated after `every` chunks in case the work or the machine changed. An option whose first chunk (a
chunk per lane, for runs side by side) is `give_up` times slower than the best already tried is not tried
further (yolo11n at 640 on 1 thread of 2).

    >>> chooser = ThreadChooser([2, 1])
    >>> threads = chooser.pick()                 # for this chunk
    >>> chooser.record(threads, seconds, images) # how long the chunk took, end to end

Options are thread counts, or `Plan`s: a model that can run side by side (ONNX Runtime on the CPU) is also
offered two runs at once, each on a chunk of its own with half the cores. On this machine's two cores, yolo11n
at 640 moved ~42 images/s as two one-thread runs against ~36 as one two-thread run: one run's parallel
operators wait for their slowest thread, two runs do not wait for each other.

A trial costs what its slower options cost: 4 chunks of each of 3 plans are 192 images, all of a `coverwatch
process` of 128 phone photos. With a `PlanMemory` (beside the model's cached export), what was decided is kept
on disk, and the next chooser for that model on a machine with as many CPUs starts with it and tries the others
again only after `every` chunks, as a running one does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
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


class PlanMemory:
    """The option a chooser decided on, in a small JSON file: {"cpus": 2, "plan": [1, 2], "ms_per_image": ...}.
    It counts only on a machine with as many CPUs and for an option still offered; a file that cannot be read
    or written is no memory (a debug line), never an error."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def recall(self, options: list):
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            if saved["cpus"] != os.cpu_count():
                return None
            plan = saved["plan"]
            option = Plan(*plan) if isinstance(plan, list) else plan
        except (OSError, ValueError, TypeError, KeyError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.debug("thread plan memory %s not used: %s", self.path, exc)
            return None
        return option if option in options else None

    def remember(self, option, speeds: dict) -> None:
        saved = {"cpus": os.cpu_count(), "plan": list(option) if isinstance(option, Plan) else option,
                 "ms_per_image": {_label(t): round(s * 1000, 2) for t, s in speeds.items()}}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(saved), encoding="utf-8")
            os.replace(tmp, self.path)  # two processes deciding at once: one whole file wins
        except OSError as exc:
            log.debug("thread plan not remembered in %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


class ThreadChooser:
    def __init__(self, options: list, *, trial: int = 4, every: int = 400, give_up: float = 1.3,
                 memory: PlanMemory | None = None):
        self.order = sorted(set(options), reverse=True)
        self.trial, self.every, self.give_up, self.memory = trial, every, give_up, memory
        self.best = self.order[0]  # every core until measured
        self._n = 0  # chunks since the current trial began
        self._samples: dict[int, list[float]] = {}
        self._decided = False
        recalled = memory.recall(self.order) if memory is not None and len(self.order) > 1 else None
        if recalled is not None:  # decided before: the next trial comes after `every` chunks, as after a trial
            self.best, self._decided, self._n = recalled, True, self._trial_chunks

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
        """Judged once the option has a chunk per lane: two runs side by side start one after the other, and
        the first one's end says nothing of their pace together."""
        mine = self._samples[threads]
        if len(mine) < (threads.lanes if isinstance(threads, Plan) else 1):
            return False
        tried = [median(v) for t, v in self._samples.items() if t != threads]
        return bool(tried) and median(mine) > self.give_up * min(tried)

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
        if self.memory is not None:
            self.memory.remember(best, speeds)
