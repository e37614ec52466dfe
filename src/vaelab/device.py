"""Choosing the device: `auto` takes CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu; naming a device this machine lacks is a ValueError.

    Also takes 'cuda:1' style names and torch.device objects (passed through unchanged).
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    kind = name.split(":", 1)[0]
    if kind not in DEVICES[1:]:
        raise ValueError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but no CUDA GPU is available")
    if kind == "mps" and not mps_available():
        raise ValueError(f"--device {name} was asked for but Apple's MPS is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}") from None
