"""Which device a config's `model.device` / `training.device` means, in the one form every user of it takes.

torch (inference: `model.to(device)`) needs `cuda:0`, not `0`; Ultralytics' train and val parse either
(`ultralytics.utils.torch_utils.parse_device` strips `cuda:`), so `cuda:0` serves both and no caller converts.

    >>> resolve_device("auto")        # with a GPU; "cpu" without
    'cuda:0'
    >>> resolve_device(0), resolve_device("cuda"), resolve_device([0, 1])
    ('cuda:0', 'cuda:0', [0, 1])
"""

from __future__ import annotations


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
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
