"""ONNX Runtime: a session as a function of an NCHW float32 batch, and what Ultralytics wrote into an export.

    >>> forward = onnx_forward(Path("models/v3/weights/best.1a2b3c4d5e6f.640.onnx"), device="cpu", threads=2)
    >>> forward(batch_nchw_float32)          # -> numpy array, the model's first output
    >>> export_metadata(forward.metadata)    # Ultralytics' custom metadata map, parsed
    ExportMetadata(task='detect', names=['person', ...], stride=32, imgsz=640, end2end=False)

Nothing here imports torch or Ultralytics: with the export cached, this is all a start needs.
"""

from __future__ import annotations

import ast
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ExportMetadata:
    task: str
    names: list[str]  # by class id
    stride: int
    imgsz: int | None  # the square input size it was exported at (None: not square, or not said)
    end2end: bool


def export_metadata(meta: dict[str, str]) -> ExportMetadata | None:
    """Parse Ultralytics' metadata (every value a str(): names '{0: 'person', ...}', imgsz '[640, 640]');
    None when it lacks the task, the names or the stride."""
    try:
        names = ast.literal_eval(meta["names"])
        task, stride = meta["task"], int(meta["stride"])
        imgsz = ast.literal_eval(meta.get("imgsz", "None"))
        end2end = meta.get("end2end", "False") == "True"
    except (KeyError, ValueError, SyntaxError, TypeError):
        return None
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        return None
    if isinstance(imgsz, (list, tuple)):
        imgsz = int(imgsz[0]) if len(set(imgsz)) == 1 else None
    return ExportMetadata(task, [str(names[i]) for i in range(len(names))], stride,
                          imgsz if isinstance(imgsz, int) else None, end2end)


def session_metadata(path: Path) -> dict[str, str]:
    """The custom metadata of an export, from a session of its own (when no forward of it is at hand)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the metadata is read
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_forward(path: Path, *, device: str, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session as a function of an NCHW float32 batch; `.metadata` is the export's custom
    metadata map."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one small conv net: parallelism is inside each op
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    # Spinning threads would steal the cores the decode threads need between runs; measured no slower without.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    else:
        # One CPU memory arena for every session of this process: a step keeps a session per thread count and
        # runs one at a time, and an arena of its own per session held ~250 MB more at the peak (detect, 640).
        _shared_cpu_arena(ort)
        so.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(str(path), so, providers=providers)
    name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    forward.metadata = dict(session.get_modelmeta().custom_metadata_map)
    return forward


_ARENA_REGISTERED = False
_ARENA_LOCK = threading.Lock()


def _shared_cpu_arena(ort) -> None:
    global _ARENA_REGISTERED
    with _ARENA_LOCK:
        if not _ARENA_REGISTERED:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena settings
            _ARENA_REGISTERED = True


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1
