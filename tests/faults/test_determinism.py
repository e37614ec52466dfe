"""Same seed, same run: identical metrics files and weights, byte for byte; a different seed differs."""

from conftest import FAKE_VALID
from vaelab.checkpoint import load_tensors
from vaelab.config import RunConfig
from vaelab.training import train

from .faultkit import assert_same_run


def run(tmp_path, name: str, data_root, seed: int):
    config = RunConfig(model="vae", objective="elbo", latent_dim=2, hidden=(16,), epochs=2, batch_size=32,
                       valid_size=FAKE_VALID, seed=seed)
    train(config, tmp_path / name, data_dir=data_root, progress=False, log=lambda message: None)
    return tmp_path / name


def test_same_seed_gives_identical_files_and_a_different_seed_differs(fake_mnist, tmp_path):
    first = run(tmp_path, "first", fake_mnist, seed=11)
    assert_same_run(run(tmp_path, "again", fake_mnist, seed=11), first)
    other = run(tmp_path, "other", fake_mnist, seed=12)
    assert (other / "metrics.jsonl").read_text() != (first / "metrics.jsonl").read_text()
    a, _ = load_tensors(first / "model.safetensors")
    b, _ = load_tensors(other / "model.safetensors")
    assert not any(a[k].equal(b[k]) for k in a)
