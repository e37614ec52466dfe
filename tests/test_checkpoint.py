"""Checkpoints: safetensors + JSON round trips, checksums, shape checks, training-state restore."""


import pytest
import torch

from vaelab.checkpoint import (
    load_model,
    load_tensors,
    load_trained,
    load_training_state,
    save_model,
    save_tensors,
    save_training_state,
)
from vaelab.config import RunConfig
from vaelab.models import init_model
from vaelab.runfiles import CheckpointError, save_config
from vaelab.training import make_optimizer

CONFIG = RunConfig(model="vae", objective="elbo", latent_dim=2, hidden=(16, 8))


def test_tensors_and_metadata_round_trip(tmp_path):
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
               "scalar": torch.tensor(3.5)}
    save_tensors(tmp_path / "t.safetensors", tensors, {"epoch": 4, "note": "x"})
    loaded, meta = load_tensors(tmp_path / "t.safetensors")
    assert meta["epoch"] == 4 and meta["note"] == "x"
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary left behind


def test_flipped_bit_and_truncation_are_detected(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"w": torch.ones(100)}, {})
    blob = bytearray(path.read_bytes())
    blob[-7] ^= 0x01  # a bit inside the tensor data
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_tensors(path)
    path.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(CheckpointError, match="damaged"):
        load_tensors(path)


def test_model_round_trip_and_shape_mismatch_is_listed(tmp_path):
    model = init_model(CONFIG, torch.device("cpu"))
    save_config(tmp_path, CONFIG)
    save_model(tmp_path, model, {"epoch": 3})
    fresh = init_model(RunConfig(**{**CONFIG.to_dict(), "seed": 9}), torch.device("cpu"))
    assert load_model(tmp_path, fresh)["epoch"] == 3
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wrong = init_model(RunConfig(**{**CONFIG.to_dict(), "latent_dim": 3}), torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"to_stats.weight: file has \(4, 8\), config needs \(6, 8\)"):
        load_model(tmp_path, wrong)


def test_training_state_restores_weights_adam_and_rng(tmp_path):
    model = init_model(CONFIG, torch.device("cpu"))
    optimizer = make_optimizer(model, 1e-3)
    loss = model.decode(model.encode(torch.rand(4, 784))[0]).square().mean()
    loss.backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)
    save_training_state(tmp_path, model=model, optimizer=optimizer, generator=generator,
                        state={"epoch": 1, "step": 1, "history": []})
    model2 = init_model(RunConfig(**{**CONFIG.to_dict(), "seed": 1}), torch.device("cpu"))
    optimizer2 = make_optimizer(model2, 1e-3)
    generator2 = torch.Generator()
    state = load_training_state(tmp_path, model=model2, optimizer=optimizer2, generator=generator2)
    assert state["epoch"] == 1
    assert torch.equal(torch.rand(5, generator=generator), torch.rand(5, generator=generator2))
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, p2)
        a, b = optimizer.state[p], optimizer2.state[p2]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert float(a["step"]) == float(b["step"]) == 1


def test_load_trained_gives_the_best_weights_in_eval_mode(tmp_path):
    model = init_model(CONFIG)
    save_config(tmp_path, CONFIG)
    save_model(tmp_path, model, {"kind": "model", "epoch": 3})
    loaded, config, meta = load_trained(tmp_path, "cpu")
    assert config == CONFIG and meta["epoch"] == 3 and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))
