"""Torch devices and mixed precision (the one copy). The only `_util` module that imports torch."""

from __future__ import annotations

import contextlib
from typing import Union

import torch

from ..errors import ConfigError

__all__ = ["DeviceLike", "device", "autocast"]

DeviceLike = Union[str, torch.device]


def device(spec: DeviceLike = "auto") -> torch.device:
    """Resolve a device argument.

    Parameters
    ----------
    spec : str or torch.device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a `torch.device`.

    Raises
    ------
    ConfigError
        An unparseable spec, or CUDA asked for where it is not available.
    """
    if isinstance(spec, str) and spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, "
                          f"got {spec!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {spec!r} requested but CUDA is not available here; use device='cpu' or 'auto'")
    return dev


def autocast(dev: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``dev`` (CPU or CUDA) when ``enabled``, else a no-op context.

    bfloat16 is supported by `torch.autocast` on both ``"cpu"`` and ``"cuda"``; other device types
    (e.g. ``"mps"``) run in full precision rather than fail.
    """
    if not enabled or dev.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
