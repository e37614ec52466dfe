"""The realism classifier: training, caching, the Fréchet distance, and the scores of generated images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from conftest import FAKE_VALID
from vaelab import classifier as clf
from vaelab.config import RunConfig
from vaelab.data import load_splits
from vaelab.evaluate import evaluate_run
from vaelab.training import train


def test_frechet_distance_matches_the_scipy_formula():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator,
                                                                                    dtype=torch.float64)
    b = torch.randn(400, 6, generator=generator, dtype=torch.float64) * 2 + 1
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))
    assert clf.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert clf.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_different_class_pairs_are_different_classes_and_seeded():
    labels = torch.arange(1000) % 10
    i, j = clf.different_class_pairs(labels, 200, seed=3)
    assert len(i) == 200 and bool((labels[i] != labels[j]).all())
    i2, j2 = clf.different_class_pairs(labels, 200, seed=3)
    assert torch.equal(i, i2) and torch.equal(j, j2)


def test_scores_of_confident_and_uniform_predictions():
    model = clf.Classifier()
    with torch.no_grad():
        model.to_logits.weight.zero_()
        model.to_logits.bias.copy_(torch.tensor([50.0] + [0.0] * 9))  # every image: class 0, certain
    images = torch.rand(20, 784, generator=torch.Generator().manual_seed(0))
    _, features = clf.predict(model, images)
    certain = clf.scores(model, images, features)
    assert certain["confidence"] == pytest.approx(1.0) and certain["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert certain["frechet"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.to_logits.bias.zero_()  # uniform over 10 classes
    uniform = clf.scores(model, images, features)
    assert uniform["confidence"] == pytest.approx(0.1) and uniform["entropy"] == pytest.approx(math.log(10))


@pytest.fixture
def small_holdout(monkeypatch):
    """The fake training set has 300 images: hold out FAKE_VALID of them, not 10000, and train with
    small batches for more epochs so the 200 remaining images give enough steps."""
    monkeypatch.setattr(clf, "HOLDOUT", FAKE_VALID)
    monkeypatch.setattr(clf, "RECIPE", {**clf.RECIPE, "epochs": 15, "batch_size": 16})


def test_classifier_trains_and_is_cached(fake_mnist, small_holdout, monkeypatch):
    logs: list[str] = []
    model, record = clf.load_classifier("mnist", fake_mnist, log=logs.append)
    weights, record_path = clf.cache_paths("mnist")
    assert weights.is_file() and json.loads(record_path.read_text())["test_accuracy"] == record["test_accuracy"]
    assert record["test_accuracy"] >= 0.9  # the fake digits' classes are easy bar patterns
    assert any("training" in line for line in logs) and any("accuracy" in line for line in logs)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been used")

    monkeypatch.setattr(clf, "train_classifier", no_training)
    logs.clear()
    again, record_again = clf.load_classifier("mnist", fake_mnist, log=logs.append)
    # Loaded from the cache it says nothing: `reproduce` loads it once per run scored.
    assert record_again == record and logs == []
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])


def test_realism_scores_in_evaluation_json(fake_mnist, small_holdout):
    config = RunConfig(model="vae", objective="elbo", latent_dim=2, hidden=(32,), epochs=2, batch_size=32,
                       valid_size=FAKE_VALID, seed=0)
    run = fake_mnist.parent / "vae"
    train(config, run, data_dir=fake_mnist, device="cpu", progress=False, log=lambda _: None)
    result = evaluate_run(run, data_dir=fake_mnist, device="cpu", classifier=True, classifier_images=50)
    saved = json.loads((run / "evaluation.json").read_text())["realism"]
    assert saved == result["realism"]
    for key in ("midpoints", "samples", "real"):
        r = saved[key]
        assert r["images"] == 50 and 0.1 <= r["confidence"] <= 1 and 0 <= r["entropy"] <= math.log(10)
        assert r["frechet"] >= 0
    # real validation digits score like real test digits; decodes of a 2-epoch model do not
    assert saved["real"]["frechet"] < saved["samples"]["frechet"]
    assert saved["real"]["confidence"] > 0.8
    assert saved["seed"] == config.eval_seed


def test_real_mnist_classifier_reaches_99_percent(mnist_root):
    """The classifier that `vaelab evaluate --classifier` and `vaelab reproduce` use, from the cache:
    trained here (about 30 s on 2 idle cores) unless an earlier run cached it; the accuracy is
    recomputed from the weights either way."""
    model, record = clf.load_classifier("mnist", mnist_root, log=print)
    accuracy = clf.accuracy(model, load_splits("mnist", mnist_root, valid_size=clf.HOLDOUT))
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-9)
    assert accuracy >= 0.99
