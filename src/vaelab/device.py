"""Choosing the device: `auto` takes CUDA, then Apple's MPS, then the CPU; whether it computes
bfloat16 natively; keeping freed CPU memory for reuse; and flushing subnormal floats to zero."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator
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


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty where it cannot be read."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def describe_cpu(info: dict[str, str]) -> str:
    """Model name, family and model numbers, and the vector units that set its matmul speed, e.g.
    "AMD EPYC (family 25 model 1, AVX2)". The family and model tell CPUs apart whose model name does
    not (cloud machines report a Zen 3 and a Zen 5 both as "AMD EPYC"); unknown where not given."""
    name = info.get("model name") or platform.processor() or "unknown CPU"
    flags = set(info.get("flags", "").split())
    details = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    details += [label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags][:1]
    details += [label for flag, label in (("avx512_bf16", "BF16"), ("amx_tile", "AMX")) if flag in flags]
    return f"{name} ({', '.join(details)})" if details else name


def cpu_model() -> str:
    """This machine's CPU as `describe_cpu` names it: what every speed figure is printed with, and the key
    under which the probed linear kernel is cached."""
    return describe_cpu(_cpuinfo())


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    return set(_cpuinfo().get("flags", "").split())


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512
    BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


# mallopt's parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks below this come from the heap and stay there when freed (glibc's cap for the mmap threshold)
KEEP_BELOW_BYTES = 32 * 1024 * 1024


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks below KEEP_BELOW_BYTES for reuse instead of returning them to the OS.

    Why: every training step frees and reallocates the same few megabytes of activations and gradients
    (blocks of 0.1-2 MB); by default glibc unmaps or trims them, and the next step faults them back in
    page by page, each page zeroed by the kernel: 500-1000 page faults a step at the default MLP, about
    25 with this setting (tests/test_device.py counts them). Numbers do not change, only where memory
    comes from. Once per process; True where applied (Linux with glibc), False elsewhere (a no-op).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, 4 * KEEP_BELOW_BYTES))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def subnormals_flushed() -> Iterator[bool | None]:
    """While inside, the CPU treats subnormal floats (below 1.2e-38 in float32) as zero in every thread
    torch computes on; on leaving, each thread's mode is set back (other code in the process, a caller's
    own tests included, keeps IEEE arithmetic). Yields True when an elementwise op spread over all of
    torch's threads flushes (measured), False when only some do (an OpenMP runtime other than libgomp or
    libomp), None where the CPU cannot (torch.set_flush_denormal: x86 with SSE3, ARM).

    Why: Adam's first moment of a weight whose gradient has become zero (the weights of a ReLU unit that
    no longer fires) decays by 0.9 a step into subnormal numbers after about 700 steps, and arithmetic on
    subnormals takes microcode on x86: on a 2-core Intel Xeon (AMX) every epoch from the third on took
    5.0 s instead of 2.9 at the default MLP (batch 128), the same validation losses. Flushed, those
    moments become 0 instead of 1e-39: no number vaelab reports moves by that."""
    was_flushing = _flushes(1)  # this thread's mode (the others follow it)
    if not _set_mode(True):
        yield None
        return
    try:
        yield _flushes(torch.get_num_threads() << 16)
    finally:
        if not was_flushing:
            _set_mode(False)


def _flushes(elements: int) -> bool:
    """Whether the threads that double `elements` subnormals flush them: one element stays in this thread,
    2^16 per thread spread over all of torch's. The smallest subnormal float32 is written as an integer
    (bits 0x00000001): converting a float to it would itself be flushed."""
    subnormal = torch.ones(elements, dtype=torch.int32).view(torch.float32)
    return int((subnormal * 2.0).count_nonzero()) == 0


def _set_mode(on: bool) -> bool:
    """torch.set_flush_denormal(on) in this thread, then in each thread of the OpenMP team torch runs on
    (the mode is per thread, and a pool already running keeps its own) through GOMP_parallel, libgomp's
    entry point (LLVM's libomp has it too); where no such library is loaded, this thread only. False
    where the CPU has no such mode."""
    if not torch.set_flush_denormal(on):
        return False
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line or "libomp" in line), None)
        if path is not None:
            body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
            parallel = ctypes.CDLL(path).GOMP_parallel  # the library torch loaded: dlopen gives the same one
            parallel.argtypes = [type(body), ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            parallel(body, None, torch.get_num_threads(), 0)
    except (OSError, AttributeError):
        pass
    return True
