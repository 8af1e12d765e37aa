"""The out-of-memory back-off: what a training tries next after the GPU ran out of memory.

Each out-of-memory error takes exactly one step down this ladder, in this order, and never back up:

1. **batch**: while the batch is above 1, halve it (``16 -> 8 -> 4 -> 2 -> 1``). An auto batch (-1) first
   becomes the batch Ultralytics' auto-batch chose for the failed attempt (16 when it never got that far),
   then is halved.
2. **image size**: once the batch is 1, the next size of ``training.oom_imgsz_steps`` smaller than the current
   one (default ``512, 416, 320``: with 640 configured, ``640 -> 512 -> 416 -> 320``); the batch stays 1.
3. **model**: once no smaller size is left, the next smaller variant of the same family
   (``x -> l -> m -> s -> n``: ``yolo11l.yaml -> yolo11m.yaml``, ``yolo11l-cls.pt -> yolo11m-cls.pt``),
   keeping batch 1 and the smallest size. A run that started from the champion's weights steps down from the
   variant the champion was trained as (its ``arch``).
4. **give up**: with the smallest batch, size and variant out of memory too, nothing fits.

Example (training.batch 16, imgsz 640, base yolo11s.yaml, steps 512/416/320):

    16@640 s -> 8@640 s -> 4@640 s -> 2@640 s -> 1@640 s -> 1@512 s -> 1@416 s -> 1@320 s -> 1@320 n -> give up

The ladder is monotone so the number of attempts is bounded (at most log2(batch) + len(steps) + 4 + 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

VARIANTS = "xlmsn"  # largest first
AUTO_BATCH = -1
AUTO_BATCH_FALLBACK = 16  # what Ultralytics itself uses when auto-batch cannot measure
_VARIANT = re.compile(r"^(?P<family>yolo(?:v)?\d+)(?P<size>[nslmx])(?P<rest>(?:-[a-z0-9]+)?\.(?:ya?ml|pt))$")


class TrainingInterrupted(Exception):
    """Raised by a trainer when asked to stop (SIGTERM): the run resumes from last.pt on the next start."""


@dataclass(frozen=True)
class AttemptSpec:
    """What one training attempt runs with. `model` is a variant name (yolo11n.yaml) or a weights path;
    `arch` is the variant name it is built as (for a champion's weights: the variant the champion was)."""

    model: str
    arch: str
    imgsz: int
    batch: int  # -1: auto-batch
    resume: bool = False

    def describe(self) -> str:
        batch = "auto" if self.batch == AUTO_BATCH else str(self.batch)
        return f"{self.arch} imgsz {self.imgsz} batch {batch}" + (" (resumed)" if self.resume else "")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or the RuntimeError Ultralytics and cuDNN wrap it in."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def smaller_variant(name: str) -> str | None:
    """`yolo11l.yaml` -> `yolo11m.yaml`; None for `...n` or a name that is not a known variant."""
    m = _VARIANT.match(name)
    if m is None or m["size"] == VARIANTS[-1]:
        return None
    return f"{m['family']}{VARIANTS[VARIANTS.index(m['size']) + 1]}{m['rest']}"


def next_attempt(failed: AttemptSpec, *, batch_used: int | None, imgsz_steps: tuple[int, ...]) -> AttemptSpec | None:
    """The attempt after `failed` ran out of memory (see the module docstring); None when nothing is left."""
    batch = failed.batch
    if batch == AUTO_BATCH:
        batch = batch_used if batch_used and batch_used > 0 else AUTO_BATCH_FALLBACK
    if batch > 1:
        return replace(failed, batch=batch // 2, resume=False)
    smaller = [s for s in sorted(set(imgsz_steps), reverse=True) if s < failed.imgsz]
    if smaller:
        return replace(failed, batch=1, imgsz=smaller[0], resume=False)
    variant = smaller_variant(failed.arch)
    if variant is not None:
        return AttemptSpec(model=variant, arch=variant, imgsz=failed.imgsz, batch=1)
    return None
