"""Which device a config's `model.device` / `training.device` means, in the one form every user of it takes.

torch (inference: `model.to(device)`) needs `cuda:0`, not `0`; Ultralytics' train and val parse either
(`ultralytics.utils.torch_utils.parse_device` strips `cuda:`), so `cuda:0` serves both and no caller converts.

    >>> resolve_device("auto")        # with a GPU; "cpu" without (and then without importing torch)
    'cuda:0'
    >>> resolve_device(0), resolve_device("cuda"), resolve_device([0, 1])
    ('cuda:0', 'cuda:0', [0, 1])
"""

from __future__ import annotations

import sys
from pathlib import Path


def resolve_device(device) -> str | list:
    """`auto` -> `cuda:0` when torch sees a GPU, else `cpu`; a GPU number or `cuda` -> `cuda:N`; anything else
    (`cpu`, `cuda:1`, `mps`, several GPUs for training as "0,1" or [0, 1]) as given."""
    if isinstance(device, (list, tuple)):
        return device
    text = str(device).strip().lower()
    if text.isdigit():
        return f"cuda:{text}"
    if text == "cuda":
        return "cuda:0"
    if text != "auto":
        return text
    return "cuda:0" if cuda_visible("cuda:0") else "cpu"


def cuda_visible(device: str = "cuda:0") -> bool:
    """Whether torch can use this CUDA device. Without a GPU driver's device files (/dev/nvidia*, ROCm's
    /dev/kfd) the answer is no without importing torch (~2 s and ~300 MB): a CPU host starts on ONNX Runtime
    alone. Once torch is imported anyway, it is asked."""
    if "torch" not in sys.modules and not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/kfd").exists():
        return False
    try:
        import torch
    except ImportError:
        return False
    index = int(str(device).partition(":")[2] or 0)
    return torch.cuda.is_available() and (index == 0 or index < torch.cuda.device_count())
