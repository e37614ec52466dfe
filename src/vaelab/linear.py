"""nn.Linear whose float32 CPU matmuls (forward and backward) can run through oneDNN instead of MKL.

Why: torch's CPU linear layer calls MKL's sgemm, which on AMD CPUs takes a generic path; on the
2-core AMD EPYC (Zen 5) this project is measured on, oneDNN's float32 kernels run the MLP's matmuls
at about 2x the rate. On an Intel Xeon (Sapphire Rapids) oneDNN measured 0.95x MKL. So the kernel is
chosen by measurement, not by vendor: `preferred_kernel` times both once per process on the products of
the MLP's widest layer and takes oneDNN only when it is clearly faster (ONEDNN_MARGIN); a run records the kernel it
started with and keeps it on --resume (the summation order, and so the last bits, follow the kernel).
The arithmetic stays float32 either way. Anything else (CUDA, float64, autocast, oneDNN switched off
or missing) takes plain nn.Linear. $VAELAB_LINEAR=onednn|torch overrides the probe.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Thinner layers (the code layers, e.g. 256 -> 2·z) stay on MKL: oneDNN's fixed cost of ~20 µs per
# call exceeds MKL's whole product there (measured at batch 128-512).
ONEDNN_MIN_WIDTH = 32
KERNELS = ("onednn", "torch")
KERNEL_ENV = "VAELAB_LINEAR"
# oneDNN is taken only when the probe finds it this much faster: far from both measured families
# (AMD EPYC Zen 5: ~2x; Intel Sapphire Rapids: 0.95x), so a noisy probe does not flip the choice.
ONEDNN_MARGIN = 1.3
# batch x in x out: the default MLP's widest layer at the recipes' batch (the trainer's default when this was
# chosen; it is 128 now).
PROBE_SHAPE = (512, 784, 512)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)ᵀ + bias -> (M, N) by oneDNN in float32; strided views are read in place."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear op and it runs on this CPU (tried once, on 1x1)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        onednn_linear(torch.ones(1, 1), torch.ones(1, 1))
    except (AttributeError, NotImplementedError, RuntimeError):  # op missing, or no kernel for this CPU
        return False
    return True


def best_seconds(fn, *args, reps: int = 7) -> float:
    """The fastest of `reps` calls fn(*args), after one to warm up (first-call set-up, caches)."""
    fn(*args)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - started)
    return best


PROBE_ROUNDS = 7


def layer_products(kernel: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple:
    """What a training step asks of one layer (y = x wᵀ + b, upstream gradient g): y, dL/dx and dL/dw, by
    `kernel` as Linear computes them."""
    if kernel == "onednn":
        return onednn_linear(x, w, b), onednn_linear(g, w.t()), onednn_linear(g.t(), x.t())
    return F.linear(x, w, b), g @ w, g.t() @ x


@functools.cache
def probe() -> dict:
    """Seconds of one layer's three float32 products at PROBE_SHAPE (forward, input and weight gradients) by
    torch's kernels and by oneDNN, timed once per process: the fastest of PROBE_ROUNDS rounds, each round
    timing both in turn, so that load from other processes falls on both alike (an earlier probe timed the
    forward product only, all of torch's calls before all of oneDNN's, and on an AMD EPYC Zen 3 loaded by
    other work, where the two are about equal, it once chose oneDNN).
    {"torch": s, "onednn": s or None where oneDNN cannot run}."""
    m, k, n = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x, w, b, g = (torch.randn(*shape, generator=generator) for shape in ((m, k), (n, k), (n,), (m, n)))
    kernels = ("torch", "onednn") if onednn_available() else ("torch",)
    best = {kernel: float("inf") for kernel in kernels}
    for kernel in kernels:
        layer_products(kernel, x, w, b, g)  # warm-up (first-call set-up, caches)
    for _ in range(PROBE_ROUNDS):
        for kernel in kernels:
            started = time.perf_counter()
            layer_products(kernel, x, w, b, g)
            best[kernel] = min(best[kernel], time.perf_counter() - started)
    return {"torch": best["torch"], "onednn": best.get("onednn")}


def preferred_kernel() -> str:
    """"onednn" or "torch" for float32 CPU layers in this process: $VAELAB_LINEAR if set, else the probe."""
    chosen = os.environ.get(KERNEL_ENV, "").strip()
    if chosen:
        if chosen not in KERNELS:
            raise ValueError(f"${KERNEL_ENV} must be one of {', '.join(KERNELS)}, got {chosen!r}")
        return chosen if chosen == "torch" or onednn_available() else "torch"
    timed = probe()
    faster = timed["onednn"] is not None and timed["torch"] >= ONEDNN_MARGIN * timed["onednn"]
    return "onednn" if faster else "torch"


def set_kernel(model: nn.Module, kernel: str) -> None:
    """Make every vaelab Linear in `model` use `kernel` ("onednn" where it applies, or "torch")."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown linear kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    for layer in model.modules():
        if isinstance(layer, Linear):
            layer.kernel = kernel


class _OneDnnLinear(torch.autograd.Function):
    """y = x Wᵀ + b with all three matmuls (y, dL/dx, dL/dW) done by oneDNN. First derivatives only:
    oneDNN's op has no derivative of its own, so a second backward raises instead of returning zeros."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)  # (N, out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (N, out)
        x, weight = ctx.saved_tensors
        grad_x = onednn_linear(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (N, in)
        grad_weight = onednn_linear(grad.t(), x.t()) if ctx.needs_input_grad[1] else None  # (out, in)
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (out,)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """Drop-in nn.Linear (same parameters, same initialisation, same state_dict keys). `kernel`:
    "onednn" or "torch" (set_kernel); None (a model nobody set) follows `preferred_kernel()`."""

    kernel: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._onednn_applies(x):
            return F.linear(x, self.weight, self.bias)
        y = _OneDnnLinear.apply(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias)  # (N·..., out)
        return y.view(*x.shape[:-1], self.out_features)

    def _onednn_applies(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 and x.numel() > 0
                and x.shape[-1] == self.in_features  # else F.linear raises torch's own shape error
                and min(self.in_features, self.out_features) >= ONEDNN_MIN_WIDTH
                and torch.backends.mkldnn.enabled  # torch.backends.mkldnn.flags(enabled=False) is obeyed
                and not torch.is_autocast_enabled("cpu")  # autocast picks its own dtype for F.linear
                and onednn_available()
                and (self.kernel or preferred_kernel()) == "onednn")
