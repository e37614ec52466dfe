"""Choosing the device: `auto` takes CUDA, then Apple's MPS, then the CPU; and whether it computes
bfloat16 natively."""

from __future__ import annotations

import platform
from pathlib import Path

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


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512
    BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False
