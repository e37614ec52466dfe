"""evaluate_run: the logged validation numbers come back exactly, results merge into evaluation.json."""

import json
import math

import pytest

from conftest import FAKE_TEST, FAKE_VALID
from vaelab.config import RunConfig
from vaelab.evaluate import evaluate_run
from vaelab.runfiles import read_metrics
from vaelab.training import train


@pytest.fixture
def run(fake_mnist, tmp_path):
    config = RunConfig(model="vae", objective="paper", latent_dim=2, hidden=(32, 16), epochs=2, batch_size=50,
                       valid_size=FAKE_VALID)
    train(config, tmp_path / "run", data_dir=fake_mnist, progress=False, log=lambda _: None)
    return tmp_path / "run"


def test_validation_numbers_equal_the_logged_ones_of_the_best_epoch(run, fake_mnist):
    result = evaluate_run(run, data_dir=fake_mnist, device="cpu")
    best = min(read_metrics(run), key=lambda r: r["valid_loss"])
    assert result["epoch"] == best["epoch"]
    for term in ("loss", "reconstruction", "regularizer", "squared_error"):
        assert result["valid"][term] == best[f"valid_{term}"]  # same weights, same seeded noise: equal
    assert set(result["test"]) == {"loss", "reconstruction", "regularizer", "squared_error", "bits_per_dim"}
    assert result["test"]["bits_per_dim"] == pytest.approx(result["test"]["loss"] / (math.log(2) * 784))
    assert result["pixel_likelihood"]["name"] == "bernoulli"
    assert json.loads((run / "evaluation.json").read_text()) == result


def test_later_evaluations_merge_into_the_file(run, fake_mnist):
    evaluate_run(run, data_dir=fake_mnist, device="cpu", nll="exact", log=lambda _: None)
    plain = evaluate_run(run, data_dir=fake_mnist, device="cpu")
    assert plain["likelihood"]["exact"]["images"] == FAKE_TEST  # kept from the first call
    again = evaluate_run(run, data_dir=fake_mnist, device="cpu", nll="iwae", k=3, iwae_images=10,
                         log=lambda _: None)
    assert "exact" not in again["likelihood"] and again["likelihood"]["iwae"]["images"] == 10  # replaced


def test_unknown_estimators_are_refused_before_any_work(run, fake_mnist):
    with pytest.raises(ValueError, match="--nll takes"):
        evaluate_run(run, data_dir=fake_mnist, device="cpu", nll="bogus")
