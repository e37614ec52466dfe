"""Device choice: auto prefers CUDA, then MPS, then the CPU; a device the machine lacks is an error."""

import platform
import subprocess
import sys

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



ZEN3 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
flags		: fpu sse2 avx avx2 fma

processor	: 1
model name	: something else
"""


def test_the_cpu_is_named_with_family_model_and_vector_units(monkeypatch, tmp_path):
    """Two AMD EPYC generations report the same model name: the family and model tell them apart."""
    assert vdevice.describe_cpu({"model name": "AMD EPYC", "cpu family": "25", "model": "1",
                                 "flags": "avx avx2 fma"}) == "AMD EPYC (family 25 model 1, AVX2)"
    assert vdevice.describe_cpu({"model name": "AMD EPYC", "cpu family": "26", "model": "2",
                                 "flags": "avx2 avx512f avx512_bf16"}) == "AMD EPYC (family 26 model 2, AVX-512, BF16)"
    assert vdevice.describe_cpu({"model name": "Intel(R) Xeon(R) Processor", "cpu family": "6", "model": "143",
                                 "flags": "avx2 avx512f avx512_bf16 amx_bf16 amx_tile"}) == \
        "Intel(R) Xeon(R) Processor (family 6 model 143, AVX-512, BF16, AMX)"
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert vdevice.describe_cpu({}) == "arm"  # (no /proc/cpuinfo: macOS, Windows)
    # read from /proc/cpuinfo's first processor
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3)
    real_path = vdevice.Path
    monkeypatch.setattr(vdevice, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    assert vdevice.cpu_model() == "AMD EPYC (family 25 model 1, AVX2)"
    assert vdevice.cpu_flags() == {"fpu", "sse2", "avx", "avx2", "fma"}

PAGE_FAULTS = """
import resource, sys, torch
from vaelab.config import RunConfig
from vaelab.models import init_model
from vaelab.objectives import objective_function
from vaelab.training import make_optimizer
if sys.argv[1] == "keep":
    from vaelab.device import keep_freed_memory
    assert keep_freed_memory()
torch.manual_seed(0)
model = init_model(RunConfig(), torch.device("cpu"))  # the default VAE, trained as the trainer does
optimizer, objective = make_optimizer(model, 1e-3), objective_function("paper")
x, noise = (torch.rand(512, 784) < 0.3).float(), torch.randn(512, 2)
def step():
    loss = objective(model, x, noise=noise)["loss"].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    def faults(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        return float(done.stdout)

    assert faults("keep") < faults("plain") / 4  # page faults a step, counted by the kernel, not timed
    # (measured on the default VAE: about 25 against 500-1000 on idle cores; 90 against 649 once on cores
    # shared with other training, so the margin is 4x: without the setting the two are about equal)


# A fresh interpreter whose torch thread pool is started by other work first (its threads then keep
# their own floating-point mode): subnormals counted inside `subnormals_flushed` (directly, or while
# `train` runs its epochs) and after it.
SUBNORMALS = """
import sys, tempfile, torch
torch.set_num_threads(2)
subnormal = torch.ones(1 << 20, dtype=torch.int32).view(torch.float32)  # bits 0x00000001: 1.4e-45
def left():
    return int((subnormal * 2.0).count_nonzero())  # both threads' halves
(torch.rand(1 << 22) * 2).sum()  # the caller's own torch work first: the pool is running
assert left() == 1 << 20  # IEEE arithmetic, as on every CPU by default
inside = []
if sys.argv[1] == "direct":
    from vaelab.device import subnormals_flushed
    with subnormals_flushed() as reached:
        assert reached is True
        inside.append(left())
else:
    import vaelab.training as training
    from vaelab.config import RunConfig
    from vaelab.data import Splits, pixel_data
    epochs = training._epochs
    def spy(*args, **kwargs):
        inside.append(left())
        return epochs(*args, **kwargs)
    training._epochs = spy
    x, y = (torch.rand(96, 784) * 255).to(torch.uint8), torch.zeros(96, dtype=torch.int64)
    data = pixel_data(Splits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:]))
    config = RunConfig(model="vae", hidden=(16,), epochs=1, batch_size=32, valid_size=16)
    with tempfile.TemporaryDirectory() as tmp:
        training.train(config, tmp + "/run", data=data, device="cpu", progress=False, log=lambda _: None)
print(inside, left())
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="FTZ/DAZ are x86's flags")
@pytest.mark.parametrize("way", ["direct", "train"])
def test_subnormals_are_flushed_on_every_thread_while_training_and_kept_after(way):
    done = subprocess.run([sys.executable, "-c", SUBNORMALS, way], capture_output=True, text=True, check=True)
    # inside: 0 (524288 where only the calling thread flushed); after: IEEE again in every thread
    assert done.stdout.split("\n")[-2] == f"[0] {1 << 20}", done.stdout
