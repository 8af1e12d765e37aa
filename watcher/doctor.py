"""`coverwatch doctor`: is this host able to run coverwatch, and if not, what to do about it."""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_packages() -> list[Check]:
    out = [Check("python", True, platform.python_version())]
    for dist in ("torch", "torchvision", "ultralytics", "onnxruntime"):
        v = _version(dist)
        fix = "" if v else f"pip install {dist} (for torch/torchvision: the pair matching your CUDA, see README)"
        out.append(Check(dist, v is not None, v or "not installed", fix))
    return out


def check_torch_pair() -> list[Check]:
    """torchvision's compiled ops must load with this torch: the user's NotImplementedError came from a mismatch."""
    try:
        import torch
        import torchvision
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return [Check("torch import", False, f"{type(exc).__name__}: {exc}", _PAIR_FIX)]
    checks = []
    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
        checks.append(Check("torchvision.ops.nms", keep.tolist() == [0], "compiled ops load with this torch"))
    except Exception as exc:  # noqa: BLE001
        detail = f"torch {torch.__version__} and torchvision {torchvision.__version__} do not match ({type(exc).__name__})"
        checks.append(Check("torchvision.ops.nms", False, detail, _PAIR_FIX))
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "none (training and inference run on the CPU)"
    checks.append(Check("cuda", True, f"available: {name}" if cuda else name))
    return checks


_PAIR_FIX = (
    "reinstall a matching pair in one command, e.g. "
    "`pip install --force-reinstall torch==2.14.1 torchvision==0.29.1` (see pytorch.org for your CUDA)"
)


def check_home(home: Path | None) -> list[Check]:
    if home is None:
        return [Check("home", False, "no config found", "run `coverwatch init HOME` or pass -c PATH")]
    try:
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return [Check("home", False, f"{home} is not writable: {exc.strerror}", f"chown/chmod {home}")]
    free = os.statvfs(home)
    free_gb = free.f_bavail * free.f_frsize / 1e9
    ok = free_gb > 1.0
    return [Check("home", ok, f"{home} writable, {free_gb:.1f} GB free", "" if ok else "free some disk space")]


def run_checks(home: Path | None) -> list[Check]:
    return check_packages() + check_torch_pair() + check_home(home)
