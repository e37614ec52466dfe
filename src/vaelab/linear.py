"""nn.Linear whose float32 CPU matmuls (forward and backward) run through oneDNN instead of MKL.

Why: torch's CPU linear layer calls MKL's sgemm, which on AMD CPUs takes a generic path; on the
2-core AMD EPYC (Zen 5) this project is measured on, oneDNN's float32 kernels run the MLP's matmuls
at about 2x the rate (benchmarks/train_speed.py prints both). The arithmetic stays float32 (no
reduced-precision mode is asked for); only the summation order differs from MKL's. Anything else
(CUDA, float64, autocast, oneDNN switched off or missing) takes plain nn.Linear.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Thinner layers (the code layers, e.g. 256 -> 2·z) stay on MKL: oneDNN's fixed cost of ~20 µs per
# call exceeds MKL's whole product there (measured at batch 128-512).
ONEDNN_MIN_WIDTH = 32


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
    """Drop-in nn.Linear (same parameters, same initialisation, same state_dict keys)."""

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
                and onednn_available())
