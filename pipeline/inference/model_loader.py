"""YOLO weights in, a `pipeline.inference.model_io.Model` out. The only module that imports Ultralytics (lazily: importing
this is cheap).

    >>> model = open_model("models/v3/weights/best.pt", allowed_roots=[home / "models"], imgsz=640,
    ...                    backend="auto", device="cpu", spare_threads=2)
    >>> model.task, model.names[:2], model.backend
    ('detect', ['person', 'bicycle'], 'onnx')
    >>> model.forward(batch_nchw_float32)   # -> numpy array, the model's first output

The parts, for benchmarks and tests:

    >>> m = load_model("models/v3/weights/best.pt", allowed_roots=[home / "models"])
    >>> m.task, m.names[:2]
    ('detect', ['person', 'bicycle'])
    >>> export_onnx(m, imgsz=640)      # once; later calls reuse the file
    PosixPath('models/v3/weights/best.1a2b3c4d5e6f.640.onnx')
    >>> forward = onnx_forward(export_onnx(m, imgsz=640), device="cpu")
    >>> forward(batch_nchw_float32)    # -> numpy array, the model's first output

Weights are pickles that can run code, so they are loaded only from the roots the caller allows (the models folder
and the configured weights), never from a drop folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import ModelUnavailable
from pipeline.inference.device import cuda_visible, resolve_device
from pipeline.inference.onnx_model import export_metadata, onnx_forward, physical_cores, session_metadata
from storage.files import file_sha256

log = logging.getLogger(__name__)

TASKS = ("detect", "classify")
# Deprecations raised inside torch's ONNX exporter, which Ultralytics picks for us: nothing we can fix here.
_EXPORT_WARNINGS = ("You are using the legacy TorchScript-based ONNX export", "The feature will be removed")


class WeightsRefused(ModelUnavailable):
    """Raised when weights lie outside the allowed roots (a drop folder, say) or are not a .pt file."""


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    sha12: str  # first 12 hex digits of the weights' sha256: names the ONNX cache and the default version
    task: str  # detect | classify
    names: list[str]  # class names by class id
    end2end: bool  # NMS-free head (YOLO26): the output is already (max_det, 6) rows per image
    stride: int  # the largest feature stride: input sides are padded to a multiple of it
    yolo: Any = None  # the ultralytics.YOLO object; None when read from a cached export's metadata


def load_model(weights: str | os.PathLike, *, allowed_roots: list[Path], download_dir: Path | None = None
               ) -> LoadedModel:
    """Load a .pt from an allowed root, or hand a pretrained name (`yolo11n.pt`) to Ultralytics to download.

    A name that is not on disk is downloaded into `download_dir` (when given) by Ultralytics; offline, or when
    the download fails, this raises ModelUnavailable with one line, and the caller's images wait.
    """
    path = _local_target(weights, download_dir)
    check_allowed(path, allowed_roots)
    if not path.is_file():
        if _offline():
            raise ModelUnavailable(_not_on_disk(weights, "offline"))
        _download(str(weights), path)
    return _load_file(path)


def _local_target(weights: str | os.PathLike, download_dir: Path | None) -> Path:
    path = Path(weights).expanduser()
    if download_dir is not None and not path.is_absolute() and len(path.parts) == 1:
        return (download_dir / path).resolve()  # a bare pretrained name: it lives in (and downloads to) models/
    return path.resolve()


def check_allowed(path: Path, allowed_roots: list[Path]) -> None:
    """Refuse weights that are not a .pt file inside (or equal to) one of `allowed_roots`, links resolved."""
    real = Path(os.path.realpath(path))
    if real.suffix.lower() != ".pt":
        raise WeightsRefused(f"model.weights: {path} is not a .pt file; refusing to load it")
    for root in allowed_roots:
        root = Path(os.path.realpath(root))
        if real == root or real.is_relative_to(root):
            return
    raise WeightsRefused(f"model.weights: {path} is outside the models folder and the configured weights; "
                         "weights are never loaded from a drop folder")


def _offline() -> bool:
    return os.environ.get("YOLO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _not_on_disk(name, why: str) -> str:
    return (f"model.weights: {name} is not on disk and cannot be downloaded {why}; images wait as awaiting_model "
            "until a model is trained and promoted")


def _download(name: str, target: Path) -> None:
    from ultralytics.utils.downloads import attempt_download_asset

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        attempt_download_asset(target)
    except Exception as exc:  # noqa: BLE001 - any network failure means the same thing: wait for a model
        log.warning("downloading %s failed: %s", name, exc)
    if not target.is_file():
        raise ModelUnavailable(_not_on_disk(name, "(the download failed)"))


def _load_file(path: Path) -> LoadedModel:
    from ultralytics import YOLO

    try:
        yolo = YOLO(str(path))
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say which, keep the daemon up
        raise ModelUnavailable(f"model.weights: {path} cannot be loaded ({type(exc).__name__}: {exc})"[:300]) from exc
    if yolo.task not in TASKS:
        raise ModelUnavailable(f"model.weights: {path} is a {yolo.task} model; coverwatch runs detect or classify")
    names = [str(yolo.names[i]) for i in range(len(yolo.names))]
    end2end = bool(getattr(yolo.model, "end2end", False))
    stride = int(max(getattr(yolo.model, "stride", [32])))
    return LoadedModel(path, file_sha256(path)[:12], yolo.task, names, end2end, stride, yolo)


class YoloModel:
    """A loaded .pt as a `pipeline.inference.model_io.Model`: ONNX Runtime sessions (one per thread count) or the PyTorch net."""

    def __init__(self, loaded: LoadedModel, imgsz: int, backend: str, forwards: dict[int, Callable], lanes: int = 1,
                 plan_file: Path | None = None):
        self.loaded, self.imgsz, self.backend, self._forwards = loaded, imgsz, backend, forwards
        self.lanes = lanes  # ONNX Runtime on the CPU: a session runs calls from several threads at once
        self.plan_file = plan_file  # ONNX Runtime on the CPU: beside the export, `best.<sha12>.<imgsz>.plan.json`
        self.names, self.task, self.stride, self.end2end = loaded.names, loaded.task, loaded.stride, loaded.end2end
        self.version = f"{loaded.path.stem[:40]}@{loaded.sha12}"
        self.source = str(loaded.path)
        self.threads = tuple(sorted(forwards, reverse=True))  # 0: the backend's own thread count
        self.temperature = manifest_temperature(loaded.path) if loaded.task == "classify" else 1.0

    def forward(self, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
        return self._forwards[self.threads[0] if threads is None else threads](batch)

    def close(self) -> None:
        self._forwards = {}  # the sessions and the net go with the last reference


def manifest_temperature(weights: Path) -> float:
    """The temperature the registry fitted on the validation split for these weights (the `calibration` of
    models/VERSION/manifest.json, beside weights/), or 1.0: weights outside the registry, a version trained
    before calibration existed, or a manifest that says nothing usable."""
    manifest = Path(weights).parent.parent / "manifest.json"
    if Path(weights).parent.name != "weights" or not manifest.is_file():
        return 1.0
    try:
        t = float((json.loads(manifest.read_text(encoding="utf-8")).get("calibration") or {}).get("temperature", 1.0))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s: no usable calibration (%s); confidences are left uncalibrated", manifest, exc)
        return 1.0
    if not (math.isfinite(t) and t > 0):
        log.warning("%s: temperature %r is not a positive number; confidences are left uncalibrated", manifest, t)
        return 1.0
    return t


def open_model(weights: str | os.PathLike, *, allowed_roots: list[Path], imgsz: int, backend: str = "auto",
               device: str = "auto", spare_threads: int = 0, download_dir: Path | None = None) -> YoloModel:
    """The weights as a Model: on CPU `auto` is ONNX Runtime (exported once at `imgsz`), on CUDA PyTorch in half
    precision. On CPU the ONNX model gets two thread counts, all cores and all but `spare_threads` (the caller's
    decode threads): pipeline.inference.threads measures which moves more images.

    With the export cached (named by the weights' sha256), the .pt is only hashed, never unpickled: names,
    task and stride come from the metadata Ultralytics wrote into the ONNX file, and neither torch nor
    Ultralytics is imported (a start in ~1 s instead of ~10)."""
    device = _usable(resolve_device(device))
    backend = backend if backend != "auto" else ("onnx" if device == "cpu" else "torch")
    if backend == "onnx":
        path = _local_target(weights, download_dir)
        check_allowed(path, allowed_roots)
        cached = _cached_export(path, imgsz)
        if cached is not None:
            model = _from_export(*cached, imgsz=imgsz, device=device, spare_threads=spare_threads)
            if model is not None:
                return model
    loaded = load_model(weights, allowed_roots=allowed_roots, download_dir=download_dir)
    if backend == "onnx":
        try:
            return _onnx_model(loaded, export_onnx(loaded, imgsz), imgsz, device, spare_threads)
        except Exception as exc:  # noqa: BLE001 - read-only models folder, exporter bug: PyTorch still works
            log.warning("ONNX export of %s failed (%s); using PyTorch", loaded.path, exc)
    return YoloModel(loaded, imgsz, "torch", {0: torch_forward(loaded, device=device)})


def _usable(device: str | list) -> str | list:
    """A CUDA device that torch cannot use (no GPU, a CPU-only torch) falls back to the CPU, with a warning."""
    if not str(device).startswith("cuda") or cuda_visible(device):
        return device
    log.warning("model.device: %s is not available here; classifying on the CPU", device)
    return "cpu"


def _onnx_model(loaded: LoadedModel, path: Path, imgsz: int, device: str, spare_threads: int) -> YoloModel:
    if device != "cpu":
        return YoloModel(loaded, imgsz, "onnx", {0: onnx_forward(path, device=device)})
    cores = physical_cores()
    # Every core first (made now: a start reads the metadata from it); the others when first tried, so a cold
    # start makes one session. cores // 2: each of two runs side by side (pipeline.inference.threads).
    counts = [cores] + sorted({max(1, cores - spare_threads), max(1, cores // 2)} - {cores}, reverse=True)
    forwards = {t: _LazyForward(path, device, t) for t in counts}
    forwards[cores].open()
    return YoloModel(loaded, imgsz, "onnx", forwards, lanes=2 if cores > 1 else 1,
                     plan_file=path.with_suffix(".plan.json"))


class _LazyForward:
    """An ONNX Runtime session made on its first call (or `open()`), once, whichever thread asks first."""

    def __init__(self, path: Path, device: str, threads: int):
        self.path, self.device, self.threads = path, device, threads
        self._forward: Callable | None = None
        self._lock = threading.Lock()

    def open(self) -> Callable:
        with self._lock:
            if self._forward is None:
                self._forward = onnx_forward(self.path, device=self.device, threads=self.threads)
            return self._forward

    @property
    def metadata(self) -> dict[str, str]:
        return self.open().metadata

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return (self._forward or self.open())(batch)


def _cached_export(path: Path, imgsz: int) -> tuple[Path, str, Path] | None:
    """(weights, sha12, export) when the weights are on disk and their export at `imgsz` is cached."""
    if not path.is_file():
        return None
    sha12 = file_sha256(path)[:12]
    export = _export_name(path, sha12, imgsz)
    return (path, sha12, export) if export.is_file() else None


def _from_export(path: Path, sha12: str, export: Path, *, imgsz: int, device: str, spare_threads: int
                 ) -> YoloModel | None:
    """The cached export alone; None (the caller loads the .pt) when its metadata does not say what we need."""
    try:
        shell = LoadedModel(path, sha12, "", [], False, 32)
        model = _onnx_model(shell, export, imgsz, device, spare_threads)
        forward = next(iter(model._forwards.values()))
        meta = export_metadata(getattr(forward, "metadata", None) or session_metadata(export))
    except Exception as exc:  # noqa: BLE001 - an unreadable cache: the .pt is still there to export again
        log.warning("cached export %s cannot be read (%s); exporting it again", export, exc)
        export.unlink(missing_ok=True)
        return None
    if meta is None or meta.task not in TASKS or meta.imgsz not in (None, imgsz):
        log.info("cached export %s lacks usable metadata; loading %s", export, path)
        return None
    loaded = LoadedModel(path, sha12, meta.task, meta.names, meta.end2end, meta.stride)
    return YoloModel(loaded, imgsz, "onnx", model._forwards, lanes=model.lanes, plan_file=model.plan_file)


def onnx_path(model: LoadedModel, imgsz: int) -> Path:
    """Where the export of `model` at `imgsz` lives: beside the weights, keyed by content and size."""
    return _export_name(model.path, model.sha12, imgsz)


def _export_name(weights: Path, sha12: str, imgsz: int) -> Path:
    return weights.with_name(f"{weights.stem}.{sha12}.{imgsz}.onnx")


def export_onnx(model: LoadedModel, imgsz: int) -> Path:
    """Export once (dynamic batch), atomically: a crash leaves no half-written cache behind."""
    final = onnx_path(model, imgsz)
    if final.is_file():
        return final
    from ultralytics import YOLO

    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=model.path.parent))
    try:
        # Ultralytics writes `<weights>.onnx` beside the weights it loaded: give it a private copy to write beside.
        src = tmp / model.path.name
        shutil.copyfile(model.path, src)
        with warnings.catch_warnings():
            for message in _EXPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
            out = YOLO(str(src)).export(format="onnx", imgsz=imgsz, dynamic=True, simplify=True, device="cpu",
                                        verbose=False)
        os.replace(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s", model.path, final)
    return final


def torch_forward(model: LoadedModel, *, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """The PyTorch model (fused; half precision on CUDA) as a function of an NCHW float32 batch.

    On CUDA each batch goes through one page-locked (pinned) host buffer, grown to the largest batch seen: the
    copy to the GPU is then a DMA that does not stage through pageable memory. One caller thread at a time."""
    import torch

    net = model.yolo.model.fuse().eval().to(device)
    cuda = device.startswith("cuda")
    net = net.half() if cuda else net.float()
    pinned: list = []  # [the buffer], once a CUDA batch arrived

    def to_device(batch: np.ndarray):
        x = torch.from_numpy(batch)
        if not cuda:
            return x
        if not pinned or pinned[0].numel() < x.numel():
            pinned[:] = [torch.empty(x.numel(), dtype=torch.float32, pin_memory=True)]
        staged = pinned[0][:x.numel()].view(x.shape)
        staged.copy_(x)
        return staged.to(device, non_blocking=True).half()  # the .cpu() below waits for it, so reuse is safe

    @torch.inference_mode()
    def forward(batch: np.ndarray) -> np.ndarray:
        y = net(to_device(batch))
        y = y[0] if isinstance(y, (list, tuple)) else y  # eval mode returns (output, features)
        return y.float().cpu().numpy()

    return forward
