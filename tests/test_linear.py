"""vaelab.linear.Linear against torch's own nn.Linear: same values and gradients, fallbacks where due."""

import pytest
import torch
import torch.nn.functional as F

from vaelab import linear
from vaelab.linear import Linear, onednn_available


@pytest.fixture(autouse=True)
def onednn_kernel(monkeypatch):
    """These tests check the oneDNN path itself: use it whatever this machine's probe prefers."""
    monkeypatch.setenv(linear.KERNEL_ENV, "onednn")


def _grads(layer: torch.nn.Linear, x: torch.Tensor, upstream: torch.Tensor, forward) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = forward(x)
    y.backward(upstream)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("shape", [(64, 96), (3, 5, 96)])
def test_values_and_gradients_match_nn_linear(shape):
    torch.manual_seed(0)
    layer = Linear(96, 48)
    x, upstream = torch.randn(shape), torch.randn(*shape[:-1], 48)
    ours = _grads(layer, x, upstream, layer)
    reference = _grads(layer, x, upstream, lambda t: F.linear(t, layer.weight, layer.bias))
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_onednn_path_is_taken_for_wide_float32_layers(monkeypatch):
    """This build has oneDNN; the wide layers must use it (the speed-up the benchmark measures)."""
    assert onednn_available()
    calls = []
    original = linear._OneDnnLinear.apply
    monkeypatch.setattr(linear._OneDnnLinear, "apply", lambda *a: calls.append(1) or original(*a))
    Linear(64, 64)(torch.randn(4, 64))
    assert calls == [1]
    Linear(64, 4)(torch.randn(4, 64))  # thin: MKL
    Linear(64, 64).double()(torch.randn(4, 64, dtype=torch.float64))  # float64: torch's own
    Linear(64, 64)(torch.randn(0, 64))  # empty batch: torch's own
    assert calls == [1]


def test_stride_zero_gradient_of_a_sum():
    """loss = y.sum() hands backward an expanded (stride-0) gradient: oneDNN reads it as ones."""
    torch.manual_seed(1)
    layer = Linear(40, 40)
    x = torch.randn(8, 40)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(8, 40).T @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, torch.full((40,), 8.0))


def _counting_onednn_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = linear.onednn_linear
    monkeypatch.setattr(linear, "onednn_linear", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("wants_input_grad, matmuls", [(False, 2), (True, 3)])
def test_the_input_gradient_is_computed_only_when_wanted(wants_input_grad, matmuls, monkeypatch):
    """A first layer's input is data: forward + dL/dW only, no dL/dx matmul."""
    layer = Linear(50, 40)
    x = torch.randn(6, 50, requires_grad=wants_input_grad)
    calls = _counting_onednn_calls(monkeypatch)
    layer(x).pow(2).sum().backward()
    assert len(calls) == matmuls
    reference = torch.nn.Linear(50, 40)
    reference.load_state_dict(layer.state_dict())
    x_ref = x.detach().clone().requires_grad_(wants_input_grad)
    reference(x_ref).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-5)
    assert (x.grad is not None) == wants_input_grad


def test_a_second_derivative_raises_instead_of_coming_back_wrong():
    layer, x = Linear(40, 40), torch.randn(5, 40, requires_grad=True)
    (grad_x,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|differentiable"):
        grad_x.sum().backward()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's flags() warns on CPU builds
def test_torch_switches_and_errors_are_nn_linears(monkeypatch):
    layer, x = Linear(64, 64), torch.randn(4, 64)
    calls = _counting_onednn_calls(monkeypatch)
    with torch.backends.mkldnn.flags(enabled=False):
        layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.nn.Linear(64, 64)(x).dtype == torch.bfloat16
    assert calls == []
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        layer(torch.randn(4, 63))


def test_state_dict_is_nn_linears():
    torch.manual_seed(2)
    ours = Linear(32, 33)
    torch.manual_seed(2)
    theirs = torch.nn.Linear(32, 33)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k in ours.state_dict():
        torch.testing.assert_close(ours.state_dict()[k], theirs.state_dict()[k], rtol=0, atol=0)


def test_a_torch_whose_onednn_op_fails_falls_back_to_nn_linear(monkeypatch):
    def broken(*args):
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(linear, "onednn_linear", broken)
    linear.onednn_available.cache_clear()
    try:
        assert not onednn_available()
        layer, x = Linear(64, 64), torch.randn(4, 64)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    finally:
        linear.onednn_available.cache_clear()


def test_the_probe_takes_onednn_only_when_clearly_faster(monkeypatch):
    monkeypatch.delenv(linear.KERNEL_ENV)
    for torch_s, onednn_s, expected in ((2.0, 1.0, "onednn"), (1.2, 1.0, "torch"), (0.95, 1.0, "torch"),
                                        (1.0, None, "torch")):
        monkeypatch.setattr(linear, "probe", lambda t=torch_s, o=onednn_s: {"torch": t, "onednn": o})
        assert linear.preferred_kernel() == expected
    monkeypatch.setenv(linear.KERNEL_ENV, "torch")
    assert linear.preferred_kernel() == "torch"  # the override wins over the probe
    monkeypatch.setenv(linear.KERNEL_ENV, "mkl")
    with pytest.raises(ValueError, match="VAELAB_LINEAR must be one of onednn, torch"):
        linear.preferred_kernel()


def test_the_probe_times_both_kernels_once():
    timed = linear.probe()
    assert timed is linear.probe() and timed["torch"] > 0
    assert (timed["onednn"] is None) != onednn_available()


def test_the_probe_times_what_training_asks_of_a_layer_both_kernels_in_turn(monkeypatch):
    x, w, b, g = torch.randn(6, 50), torch.randn(40, 50), torch.randn(40), torch.randn(6, 40)
    layer_input, weight = x.clone().requires_grad_(), w.clone().requires_grad_()
    torch.nn.functional.linear(layer_input, weight, b).backward(g)
    for kernel in ("torch", "onednn") if onednn_available() else ("torch",):
        y, grad_x, grad_w = linear.layer_products(kernel, x, w, b, g)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b))
        torch.testing.assert_close(grad_x, layer_input.grad)
        torch.testing.assert_close(grad_w, weight.grad)
    calls = []
    monkeypatch.setattr(linear, "layer_products", lambda kernel, *tensors: calls.append(kernel))
    monkeypatch.setattr(linear, "onednn_available", lambda: True)
    linear.probe.cache_clear()
    try:
        timed = linear.probe()
    finally:
        linear.probe.cache_clear()
    # a warm-up each, then the two in turn: load from elsewhere falls on both alike
    assert calls == ["torch", "onednn"] * (1 + linear.PROBE_ROUNDS)
    assert set(timed) == {"torch", "onednn"} and all(s >= 0 for s in timed.values())


def test_a_layer_set_to_torch_never_calls_onednn(monkeypatch):
    model = torch.nn.Sequential(Linear(50, 40), torch.nn.ReLU(), Linear(40, 40))
    linear.set_kernel(model, "torch")
    calls = _counting_onednn_calls(monkeypatch)
    model(torch.randn(6, 50)).sum().backward()
    assert calls == [] and all(layer.kernel == "torch" for layer in model if isinstance(layer, Linear))
    with pytest.raises(ValueError, match="unknown linear kernel"):
        linear.set_kernel(model, "mkl")
