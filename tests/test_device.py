"""Device choice: auto prefers CUDA, then MPS, then the CPU; a device the machine lacks is an error."""

import pytest
import torch

from vaelab import device as vdevice


def test_cpu_and_torch_devices_pass_through():
    assert vdevice.resolve_device("cpu") == torch.device("cpu")
    assert vdevice.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vdevice, "mps_available", lambda: False)
    assert vdevice.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(vdevice, "mps_available", lambda: True)
    assert vdevice.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vdevice.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "CPU"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match="device"):
        vdevice.resolve_device(name)


def test_missing_accelerators_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vdevice, "mps_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        vdevice.resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        vdevice.resolve_device("mps")


def test_native_bfloat16_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    cases = (({"avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True), (set(), False))
    for flags, native in cases:
        monkeypatch.setattr(vdevice, "cpu_flags", lambda flags=flags: flags)
        assert vdevice.native_bfloat16(cpu) is native
    assert vdevice.native_bfloat16(torch.device("mps")) is False
