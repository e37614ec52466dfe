"""evaluate_run: the logged validation numbers come back exactly, results merge into evaluation.json."""

import json
import math

import pytest

from conftest import FAKE_TEST, FAKE_VALID
from vaelab.config import RunConfig
from vaelab.evaluate import evaluate_run, saved_evaluation
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


def test_a_saved_evaluation_counts_only_for_the_same_request_on_the_same_checkpoint(run, fake_mnist):
    asked = {"nll": "iwae", "k": 3, "iwae_images": 10}
    assert saved_evaluation(run, **asked) is None  # nothing evaluated yet
    result = evaluate_run(run, data_dir=fake_mnist, device="cpu", log=lambda _: None, **asked)
    assert saved_evaluation(run, **asked) == result
    assert saved_evaluation(run, nll="iwae", k=4, iwae_images=10) is None  # another question
    assert saved_evaluation(run, **asked, precision="bfloat16") is None
    path = run / "evaluation.json"
    older = json.loads(path.read_text())
    older["request"].pop("format")  # written before requests had a format: scored again
    path.write_text(json.dumps(older))
    assert saved_evaluation(run, **asked) is None
    path.write_text(json.dumps(result))
    best = min(read_metrics(run), key=lambda r: r["valid_loss"])["epoch"]
    result["request"]["epoch"] = best + 1  # the run has another best checkpoint now
    path.write_text(json.dumps(result))
    assert saved_evaluation(run, **asked) is None


def test_unknown_estimators_are_refused_before_any_work(run, fake_mnist):
    with pytest.raises(ValueError, match="--nll takes"):
        evaluate_run(run, data_dir=fake_mnist, device="cpu", nll="bogus")


def test_bfloat16_evaluation_is_autocast_where_native_and_refused_elsewhere(run, fake_mnist, monkeypatch):
    import torch

    from vaelab import training
    from vaelab.config import ConfigError

    plain = evaluate_run(run, data_dir=fake_mnist, device="cpu", nll="exact", log=lambda _: None)
    monkeypatch.setattr(training, "native_bfloat16", lambda device: False)
    with pytest.raises(ConfigError, match="needs native bfloat16"):
        evaluate_run(run, data_dir=fake_mnist, device="cpu", precision="bfloat16")
    with pytest.raises(ConfigError, match="unknown precision"):
        evaluate_run(run, data_dir=fake_mnist, device="cpu", precision="float16")
    monkeypatch.setattr(training, "native_bfloat16", lambda device: True)
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: seen.append(linear(*a).dtype) or linear(*a))
    half = evaluate_run(run, data_dir=fake_mnist, device="cpu", nll="exact", log=lambda _: None,
                        precision="bfloat16")
    assert torch.bfloat16 in seen and half["precision"] == "bfloat16" and plain["precision"] == "float32"
    for split in ("valid", "test"):  # close, not equal: bfloat16 keeps 8 bits of mantissa
        assert half[split]["loss"] == pytest.approx(plain[split]["loss"], rel=0.02)
        assert half[split]["loss"] != plain[split]["loss"]
    # the likelihood is computed in float32 whatever the precision
    assert half["likelihood"]["exact"]["nll"] == plain["likelihood"]["exact"]["nll"]
