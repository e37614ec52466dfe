"""Numerical faults: exp(σ) overflowing, NaN reaching the loss, NaN in the data. Training stops at the
first non-finite loss naming epoch and step, the last good checkpoint stays intact, `--resume` from it
works; NaN data is refused before anything is written. σ is not clamped (see vaelab/train.py)."""

import math

import numpy as np
import pytest
import torch

from conftest import FAKE_VALID
from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.config import RunConfig
from vaelab.data import DataError, load_data
from vaelab.objectives import OBJECTIVES, paper_objective, paper_penalty
from vaelab.runfiles import read_metrics
from vaelab.training import resume, train

from .faultkit import SMALL_ARGS, assert_one_clear_line, assert_same_run, run_cli


def overflow_sigma(model, x):
    with torch.no_grad():
        model.to_stats.bias[2:] = 100.0  # σ ≈ 100: exp(σ) is inf in float32
    return x


def nan_pixel(model, x):
    x = x.clone()
    x[0, 0] = math.nan
    return x


FAULTS = {  # fault, training (True) or validation call it hits, its number, the message it must give
    "exp(σ) overflows in training": (overflow_sigma, True, 20 + 3, "non-finite loss (nan) at epoch 2, step 3 of 20"),
    "NaN reaches a training loss": (nan_pixel, True, 20 + 7, "non-finite loss (nan) at epoch 2, step 7 of 20"),
    "exp(σ) overflows in validation": (overflow_sigma, False, 5 + 1, "non-finite validation loss after epoch 2"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_non_finite_loss_stops_at_once_keeps_the_last_checkpoint_and_resume_works(fault, small_reference,
                                                                                  trusted_cli_mnist, tmp_path,
                                                                                  monkeypatch):
    inject, in_training, at_call, message = FAULTS[fault]
    calls = {"n": 0}

    def faulty(model, x, **kwargs):
        if model.training == in_training:
            calls["n"] += 1
            if calls["n"] == at_call:
                x = inject(model, x)
        return paper_objective(model, x, **kwargs)

    monkeypatch.setitem(OBJECTIVES, "paper", faulty)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["train", *SMALL_ARGS, "--data-dir", trusted_cli_mnist, "--out", run_dir])
    assert code == 1
    assert_one_clear_line(err, message, "the last good checkpoint (epoch 1) is intact")
    [only] = checkpoint_paths(run_dir)
    assert load_tensors(only)[1]["state"]["epoch"] == 1
    assert load_tensors(run_dir / "model.safetensors")[1]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]
    monkeypatch.setitem(OBJECTIVES, "paper", paper_objective)
    code, _, err = run_cli(["train", "--resume", run_dir, "--data-dir", trusted_cli_mnist])
    assert code == 0, err
    assert_same_run(run_dir, small_reference)


@pytest.mark.parametrize("binarize", ["dynamic", "none"])
def test_nan_in_the_data_is_refused_before_anything_is_written(binarize, fake_mnist, tmp_path):
    config = RunConfig(hidden=(16,), epochs=2, batch_size=32, valid_size=FAKE_VALID, binarize=binarize)
    data = load_data(config, fake_mnist)
    data.train[17, 300] = math.nan
    with pytest.raises(DataError, match=r"train image 17: pixel values must be finite and in \[0, 1\]"):
        train(config, tmp_path / "new", data=data, progress=False)
    assert not (tmp_path / "new").exists()
    train(config, tmp_path / "run", data_dir=fake_mnist, progress=False, log=lambda m: None)
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="train image 17"):
        resume(tmp_path / "run", epochs=3, data=data, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files


def test_sigma_is_not_clamped_so_the_paper_objective_is_unchanged_and_overflow_shows():
    """The guard is the non-finite check above, not a clamp: eq. (3) holds as written for every σ,
    and exp(σ) overflowing float32 (σ > 88.7) gives inf, which stops training, instead of a silently
    different objective."""
    sigma = torch.linspace(-30, 88, 237).view(-1, 1)  # (N, 1), float32
    m = torch.linspace(-3, 3, 237).view(-1, 1)
    s64, m64 = sigma.double().numpy()[:, 0], m.double().numpy()[:, 0]
    np.testing.assert_allclose(paper_penalty(m, sigma).numpy(), np.exp(s64) - (1 + s64) + m64**2, rtol=1e-6)
    assert torch.isinf(paper_penalty(torch.zeros(1, 1), torch.full((1, 1), 89.0))).all()
