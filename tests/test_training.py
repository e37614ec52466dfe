"""Training: learning happens, checkpoints and metrics are written, resume is bit-exact, a
non-finite loss stops cleanly. Tiny models on fake data."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAKE_VALID
from vaelab import training
from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.config import ConfigError, RunConfig
from vaelab.data import load_data
from vaelab.objectives import OBJECTIVES
from vaelab.runfiles import read_metrics
from vaelab.training import NonFiniteLossError, resume, train


def tiny(**overrides) -> RunConfig:
    values = dict(model="vae", objective="paper", latent_dim=2, hidden=(32, 16), epochs=4, batch_size=32,
                  valid_size=FAKE_VALID, seed=3)
    values.update(overrides)
    return RunConfig(**values)


def assert_same_run(straight, split) -> dict:
    """A straight run and a stopped-and-resumed one hold the same bytes; returns the newest checkpoint."""
    for name in ("metrics.jsonl", "model.safetensors"):
        assert (straight / name).read_bytes() == (split / name).read_bytes(), name
    a, b = (load_file(checkpoint_paths(run)[0]) for run in (straight, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a


def quiet(_message: str) -> None:
    pass


@pytest.mark.parametrize("objective", ["paper", "elbo"])
def test_vae_learns_and_writes_its_run_directory(fake_mnist, tmp_path, objective):
    result = train(tiny(objective=objective, epochs=6), tmp_path / "run", data_dir=fake_mnist, progress=False,
                   log=quiet)
    history = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert history[-1]["valid_loss"] < 0.8 * history[0]["valid_loss"]
    assert result.best_valid_loss == min(r["valid_loss"] for r in history)
    assert {"train_loss", "train_reconstruction", "train_regularizer", "valid_loss", "valid_reconstruction",
            "valid_regularizer", "valid_squared_error"} <= set(history[0])
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["config"]["objective"] == objective
    assert len(checkpoint_paths(run)) == 2  # newest + one fallback
    _, meta = load_tensors(run / "model.safetensors")
    assert meta["epoch"] == result.best_epoch


def test_autoencoder_and_pca_runs(fake_mnist, tmp_path):
    ae = train(tiny(model="autoencoder", objective="reconstruction", epochs=3), tmp_path / "ae",
               data_dir=fake_mnist, progress=False, log=quiet)
    assert ae.history[-1]["valid_regularizer"] == 0
    pca = train(tiny(model="pca", objective="squared-error"), tmp_path / "pca", data_dir=fake_mnist,
                progress=False, log=quiet)
    assert pca.best_valid_loss == pytest.approx(pca.history[0]["valid_squared_error"])
    # Two principal directions must explain part of the variance: better than decoding the mean image.
    valid = load_data(tiny(), fake_mnist).valid
    mean_only = (valid - valid.mean(0)).square().sum(-1).mean().item()
    assert pca.best_valid_loss < 0.9 * mean_only


def test_two_plus_two_epochs_equal_four_bit_for_bit(fake_mnist, tmp_path):
    config = tiny(epochs=4)
    train(config, tmp_path / "straight", data_dir=fake_mnist, progress=False, log=quiet)
    train(RunConfig(**{**config.to_dict(), "epochs": 2}), tmp_path / "split", data_dir=fake_mnist,
          progress=False, log=quiet)
    resume(tmp_path / "split", epochs=4, data_dir=fake_mnist, progress=False, log=quiet)
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    # Resuming a finished run is a no-op success.
    again = resume(tmp_path / "split", data_dir=fake_mnist, progress=False, log=quiet)
    assert again.epochs_done == 4
    straight, split = tmp_path / "straight" / "metrics.jsonl", tmp_path / "split" / "metrics.jsonl"
    assert straight.read_bytes() == split.read_bytes()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(fake_mnist, tmp_path, monkeypatch):
    real = OBJECTIVES["paper"]
    calls = {"n": 0}

    def faulty(model, x, **kwargs):  # 7 steps + 1 validation batch, then the 3rd step of epoch 2
        calls["n"] += 1
        terms = real(model, x, **kwargs)
        if calls["n"] == 7 + 1 + 3:
            terms["loss"] = terms["loss"] * math.inf
        return terms

    monkeypatch.setitem(OBJECTIVES, "paper", faulty)
    config = tiny(epochs=3)  # 200 train images / 32 = 7 steps per epoch
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3 of 7"):
        train(config, tmp_path / "run", data_dir=fake_mnist, progress=False, log=quiet)
    run = tmp_path / "run"
    [only] = checkpoint_paths(run)
    _, meta = load_tensors(only)
    assert meta["state"]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    monkeypatch.setitem(OBJECTIVES, "paper", real)
    result = resume(run, data_dir=fake_mnist, progress=False, log=quiet)
    assert result.epochs_done == 3
    train(config, tmp_path / "clean", data_dir=fake_mnist, progress=False, log=quiet)
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "clean" / "metrics.jsonl").read_bytes()


def test_bfloat16_trains_where_native_and_is_refused_elsewhere(fake_mnist, tmp_path, monkeypatch):
    config = RunConfig(model="vae", objective="elbo", latent_dim=2, hidden=(32, 16), epochs=1, batch_size=50,
                       valid_size=FAKE_VALID, precision="bfloat16")
    monkeypatch.setattr(training, "native_bfloat16", lambda device: False)
    with pytest.raises(ConfigError, match="needs native bfloat16"):
        train(config, tmp_path / "emulated", data_dir=fake_mnist, progress=False, log=quiet)
    assert not (tmp_path / "emulated").exists()
    monkeypatch.setattr(training, "native_bfloat16", lambda device: True)
    calls = []
    real_autocast = torch.autocast

    def recording_autocast(*args, **kwargs):
        if "dtype" in kwargs:  # the trainer's and validation's (not bernoulli_nll's float32 inside)
            calls.append(kwargs.get("enabled", True) and kwargs["dtype"])
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(training.torch, "autocast", recording_autocast)
    result = train(config, tmp_path / "bf16", data_dir=fake_mnist, progress=False, log=quiet)
    assert set(calls) == {torch.bfloat16} and math.isfinite(result.best_valid_loss)  # steps and validation
    # `vaelab evaluate --precision bfloat16` gives back the logged number; its default is float32
    from vaelab.evaluate import evaluate_run

    again = evaluate_run(tmp_path / "bf16", data_dir=fake_mnist, device="cpu", precision="bfloat16", log=quiet)
    assert again["valid"]["loss"] == result.best_valid_loss
    assert evaluate_run(tmp_path / "bf16", data_dir=fake_mnist, device="cpu", log=quiet)["valid"]["loss"] \
        == pytest.approx(result.best_valid_loss, rel=0.02)
    float32 = train(dataclasses.replace(config, precision="float32"), tmp_path / "fp32", data_dir=fake_mnist,
                    progress=False, log=quiet)
    assert result.best_valid_loss != float32.best_valid_loss  # the autocast did change the arithmetic


def test_a_run_keeps_its_linear_kernel_on_resume(fake_mnist, tmp_path, monkeypatch):
    """Resumed under another preferred kernel, a run keeps the one it started with: same bytes as one go."""
    config = RunConfig(model="vae", objective="paper", latent_dim=2, hidden=(64, 32), epochs=1, batch_size=50,
                       valid_size=FAKE_VALID)
    monkeypatch.setenv("VAELAB_LINEAR", "torch")
    train(config, tmp_path / "split", data_dir=fake_mnist, progress=False, log=quiet)
    train(dataclasses.replace(config, epochs=2), tmp_path / "whole", data_dir=fake_mnist, progress=False, log=quiet)
    monkeypatch.setenv("VAELAB_LINEAR", "onednn")
    resume(tmp_path / "split", epochs=2, data_dir=fake_mnist, progress=False, log=quiet)
    newest = [checkpoint_paths(tmp_path / name)[0] for name in ("split", "whole")]
    assert load_tensors(newest[0])[1]["state"]["linear_kernel"] == "torch"
    assert newest[0].read_bytes() == newest[1].read_bytes()


# --- IWAE, learned priors, KL warm-up and the cosine schedule ----------------------------------------

def test_kl_weight_rises_per_step_over_the_warmup_epochs():
    config = tiny(objective="elbo", warmup=2, beta=0.5)
    weights = [training.kl_weight(config, step, steps_per_epoch=3) for step in range(8)]
    assert weights == pytest.approx([0.5 / 6, 1 / 6, 0.25, 2 / 6, 2.5 / 6, 0.5, 0.5, 0.5])
    assert training.kl_weight(tiny(beta=0.5), 0, 3) == 0.5  # no warm-up: β from the first step


def test_cosine_learning_rate_per_step():
    config = tiny(lr_schedule="cosine", epochs=2, lr=1e-3)
    rates = [training.learning_rate(config, step, steps_per_epoch=2) for step in range(5)]
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)] + [0.0]
    assert rates == pytest.approx(expected, abs=1e-12)
    assert rates[0] == 1e-3 and rates[2] == pytest.approx(5e-4)
    assert training.learning_rate(tiny(epochs=2), 3, 2) == tiny().lr  # constant


def test_the_trainer_uses_the_schedules(fake_mnist, tmp_path, monkeypatch):
    seen = []
    real = training.learning_rate

    def spy(config, step, steps_per_epoch):
        seen.append((step, training.kl_weight(config, step, steps_per_epoch)))
        return real(config, step, steps_per_epoch)

    monkeypatch.setattr(training, "learning_rate", spy)
    result = train(tiny(objective="elbo", epochs=2, warmup=1, lr_schedule="cosine"), tmp_path / "run",
                   data_dir=fake_mnist, progress=False, log=quiet)
    assert [s for s, _ in seen] == list(range(14))  # 200 images / 32 = 7 steps per epoch
    assert [w for _, w in seen] == pytest.approx([(s + 1) / 7 for s in range(7)] + [1.0] * 7)
    assert result.history[-1]["step"] == 14


@pytest.mark.parametrize("options", [
    {"objective": "iwae", "k": 3, "prior": "mog:3", "warmup": 1, "lr_schedule": "cosine"},
    {"objective": "elbo", "prior": "vamp:4", "warmup": 3},
])
def test_resume_is_bit_exact_with_the_likelihood_options(fake_mnist, tmp_path, options):
    """A run stopped after epoch 2 of 4 (killed: its epoch-2 checkpoint is what it left) and resumed equals
    the straight run bit for bit; without the cosine schedule (whose horizon is the configured total) the
    total may also change on resume, as in the 2 + 2 test above."""
    config = tiny(**options)

    class Killed(Exception):
        pass

    def kill_after_epoch_2(message: str) -> None:
        if message.startswith("epoch 2/"):
            raise Killed

    train(config, tmp_path / "straight", data_dir=fake_mnist, progress=False, log=quiet)
    if options.get("lr_schedule") == "cosine":
        with pytest.raises(Killed):
            train(config, tmp_path / "split", data_dir=fake_mnist, progress=False, log=kill_after_epoch_2)
        resume(tmp_path / "split", data_dir=fake_mnist, progress=False, log=quiet)
    else:
        train(dataclasses.replace(config, epochs=2), tmp_path / "split", data_dir=fake_mnist, progress=False,
              log=quiet)
        resume(tmp_path / "split", epochs=4, data_dir=fake_mnist, progress=False, log=quiet)
    a = assert_same_run(tmp_path / "straight", tmp_path / "split")
    assert any(k.startswith("model.prior.") for k in a)  # the learned prior is in the checkpoint


def test_iwae_with_a_vamp_prior_learns(fake_mnist, tmp_path):
    result = train(tiny(objective="iwae", k=4, prior="vamp:8", epochs=5, warmup=1), tmp_path / "run",
                   data_dir=fake_mnist, progress=False, log=quiet)
    history = result.history
    assert history[-1]["valid_loss"] < 0.8 * history[0]["valid_loss"]
    # the prior's pseudo-inputs moved: they are trained with the rest
    from vaelab.checkpoint import load_trained

    model, config, _ = load_trained(tmp_path / "run", "cpu")
    assert config.prior == "vamp:8" and model.prior.raw_inputs.abs().max() > 0.05


def test_the_probed_kernel_is_kept_per_machine(tmp_path, monkeypatch):
    """A loaded machine may time the kernels differently from one process to the next: the first probe's
    choice is kept in the cache, so later processes start their runs on the same kernel."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VAELAB_LINEAR", raising=False)
    monkeypatch.setattr(training, "preferred_kernel", lambda: "onednn")
    assert training.machine_kernel() == "onednn"
    monkeypatch.setattr(training, "preferred_kernel", lambda: "torch")  # a later, noisier probe
    assert training.machine_kernel() == "onednn"
    assert "onednn" in (tmp_path / "cache" / training.KERNEL_CACHE).read_text()
    monkeypatch.setenv("VAELAB_LINEAR", "torch")
    assert training.machine_kernel() == "torch"  # the override still wins
