"""The Python API (vaelab.load_run, Run, load_mnist) on tiny runs trained on fake MNIST."""

import math

import numpy as np
import pytest
import torch

import vaelab
from conftest import FAKE_TEST
from vaelab import data as vdata
from vaelab.models import encode_mean, quantile_grid, sample_images
from vaelab.runfiles import read_json, read_metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A data root with fake MNIST and one tiny run per model kind."""
    from conftest import trust_files, write_fake_dataset

    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("api") / "data"
    # as many training images as MNIST's default validation split needs, so load_mnist's defaults work
    trust_files(monkeypatch, "mnist", write_fake_dataset(root, vdata.SPECS["mnist"], n_train=10200))
    monkeypatch.setenv(vdata.ENV_DATA, str(root))
    monkeypatch.setenv(vdata.ENV_CACHE, str(root.parent / "cache"))
    made = {"root": root}
    for name, model, objective, dim in (("paper", "vae", "paper", 2), ("elbo", "vae", "elbo", 2),
                                        ("elbo1", "vae", "elbo", 1), ("elbo3", "vae", "elbo", 3),
                                        ("ae", "autoencoder", "reconstruction", 2),
                                        ("pca", "pca", "squared-error", 2)):
        config = vaelab.RunConfig(model=model, objective=objective, latent_dim=dim, hidden=(32, 16),
                                  epochs=0 if model == "pca" else 2, batch_size=50)
        made[name] = root.parent / name
        vaelab.train(config, made[name], progress=False, log=lambda _: None)
    yield made
    monkeypatch.undo()


def test_load_run_rebuilds_the_run(runs):
    run = vaelab.load_run(runs["paper"])
    assert run.config.model == "vae" and run.config.objective == "paper" and run.path == runs["paper"]
    assert run.device == torch.device("cpu") and not run.model.training
    assert run.epoch in (1, 2) and run.image_shape == (28, 28)
    assert "latent dim 2" in repr(run)


def test_encode_takes_every_image_form_alike(runs):
    run = vaelab.load_run(runs["paper"])
    x, _ = vaelab.load_mnist("test")  # (N, 28, 28) float in {0, 1}
    codes = run.encode(x[:8])
    assert codes.shape == (8, 2) and codes.dtype == torch.float32
    assert torch.equal(codes, encode_mean(run.model, x[:8].reshape(8, 784)))
    for form in (x[:8].reshape(8, 784), x[:8].reshape(8, 1, 28, 28), x[:8].numpy(),
                 (x[:8] * 255).to(torch.uint8), (x[:8] * 255).numpy().astype(np.uint8), x[:8].bool(),
                 x[:8].double()):
        assert torch.allclose(run.encode(form), codes, atol=1e-6)


@pytest.mark.parametrize("bad, says", [
    ([[0.0] * 784], "got list"),
    (torch.zeros(3, 783), "shape (3, 783)"),
    (torch.zeros(3, 3, 28, 28), "shape (3, 3, 28, 28)"),
    (torch.zeros(28, 28), "shape (28, 28)"),
    (torch.zeros(3, 784, dtype=torch.int64), "integers other than uint8"),
    (torch.full((3, 784), 2.0), "outside [0, 1]"),
    (torch.full((3, 784), float("nan")), "outside [0, 1]"),
    (np.array([object()] * 784, dtype=object).reshape(1, 784), "Python objects"),
])
def test_bad_images_are_refused_saying_what_was_expected_and_what_came(runs, bad, says):
    run = vaelab.load_run(runs["paper"])
    with pytest.raises(ValueError) as error:
        run.encode(bad)
    assert says in str(error.value) and "expected images as a torch tensor or numpy array" in str(error.value)


def test_posterior_applies_each_objectives_meaning_of_sigma(runs):
    x, _ = vaelab.load_mnist("test")
    for name, std_of in (("paper", lambda s: s.exp()), ("elbo", lambda s: (0.5 * s).exp())):
        run = vaelab.load_run(runs[name])
        mean, std = run.posterior(x[:8])
        m, sigma = run.model.encode(x[:8].reshape(8, 784))
        assert mean.shape == std.shape == (8, 2)
        assert torch.equal(mean, m) and torch.allclose(std, std_of(sigma))
    with pytest.raises(ValueError, match="only VAEs"):
        vaelab.load_run(runs["ae"]).posterior(x[:8])


def test_decode_reconstruct_sample(runs):
    run = vaelab.load_run(runs["elbo"])
    x, _ = vaelab.load_mnist("test")
    images = run.decode(torch.zeros(5, 2))
    assert images.shape == (5, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert torch.equal(run.reconstruct(x[:4]), run.decode(run.encode(x[:4])))
    assert torch.allclose(run.decode(np.zeros((5, 2), dtype=np.float32)), images)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        run.decode(torch.zeros(5, 3))
    samples = run.sample(16, seed=3)
    assert samples.shape == (16, 28, 28)
    assert torch.equal(samples, run.sample(16, seed=3)) and not torch.equal(samples, run.sample(16, seed=4))
    assert torch.equal(samples.reshape(16, 784), sample_images(run.model, 16, seed=3))
    with pytest.raises(ValueError, match="n must be"):
        run.sample(-1)


def test_interpolate_walks_the_straight_line_between_two_codes(runs):
    run = vaelab.load_run(runs["paper"])
    x, _ = vaelab.load_mnist("test")
    path = run.interpolate(x[0], x[1])  # single (28, 28) images
    assert path.shape == (9, 28, 28)
    a, b = run.encode(x[:1]), run.encode(x[1:2])
    assert torch.allclose(path[0], run.decode(a)[0], atol=1e-6)
    assert torch.allclose(path[-1], run.decode(b)[0], atol=1e-6)
    assert torch.allclose(path[4], run.decode((a + b) / 2)[0], atol=1e-6)  # the paper's midpoint
    assert torch.allclose(run.interpolate(x[0].reshape(784), x[1:2], steps=9), path, atol=1e-6)
    assert run.interpolate(x[0], x[1], steps=3).shape == (3, 28, 28)
    with pytest.raises(ValueError, match="x_b: expected one image"):
        run.interpolate(x[0], x[:2])


def test_latent_grid_is_the_manifold_figures_grid(runs):
    images, codes = vaelab.load_run(runs["elbo"]).latent_grid(15)
    assert images.shape == (225, 28, 28) and torch.equal(codes, quantile_grid(15, 2)[0])
    assert codes[0, 1] == codes[:, 1].max() and codes[0, 0] == codes[:, 0].min()  # top-left: low c1, high c2
    images1, codes1 = vaelab.load_run(runs["elbo1"]).latent_grid(7)
    assert images1.shape == (7, 28, 28) and codes1.shape == (7, 1)
    pca = vaelab.load_run(runs["pca"])
    _, pca_codes = pca.latent_grid(5)
    assert torch.allclose(pca_codes, quantile_grid(5, 2)[0] * pca.model.variances.sqrt())
    with pytest.raises(ValueError, match="latent dimension 1 or 2"):
        vaelab.load_run(runs["elbo3"]).latent_grid()


def test_metrics_and_evaluate_return_the_runs_files(runs):
    run = vaelab.load_run(runs["elbo"])
    assert run.metrics() == read_metrics(runs["elbo"]) and [m["epoch"] for m in run.metrics()] == [1, 2]
    result = run.evaluate(nll="exact", log=lambda _: None)
    assert result == read_json(runs["elbo"] / "evaluation.json")
    assert result["likelihood"]["exact"]["images"] == FAKE_TEST and math.isfinite(result["test"]["loss"])
    assert "iwae" not in result["likelihood"]


def test_load_mnist_gives_the_images_runs_see(runs):
    x, y = vaelab.load_mnist("test")
    assert x.shape == (FAKE_TEST, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    data = vdata.load_data(vaelab.RunConfig())
    assert torch.equal(x.reshape(FAKE_TEST, 784), data.test)
    gray, _ = vaelab.load_mnist("valid", binarize="none")
    assert torch.equal(gray.reshape(len(gray), 784), data.splits.valid_x.float() / 255)
    train_a, _ = vaelab.load_mnist("train")
    assert torch.equal(train_a, vaelab.load_mnist("train")[0])  # one seeded draw
    assert torch.equal(vaelab.load_dataset("mnist", "test")[0], x)
    with pytest.raises(ValueError, match="unknown split"):
        vaelab.load_mnist("validation")
