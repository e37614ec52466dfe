"""The run configuration: defaults, JSON round trip, and one clear error for each bad value."""

import pytest

from vaelab.config import ConfigError, RunConfig, parse_hidden


def test_defaults_are_the_papers_vae():
    c = RunConfig()
    assert (c.model, c.objective, c.latent_dim, c.hidden) == ("vae", "paper", 2, (512, 256))
    assert (c.batch_size, c.lr, c.binarize, c.n_pixels) == (128, 2e-3, "dynamic", 784)


def test_dict_round_trip_and_unknown_fields():
    c = RunConfig(model="autoencoder", objective="reconstruction", hidden=[64, 32], seed=7)
    assert c.hidden == (64, 32) and RunConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["hidden"] == [64, 32]  # JSON-able
    with pytest.raises(ConfigError, match="unknown config fields: colour, size"):
        RunConfig.from_dict({**c.to_dict(), "size": 1, "colour": 2})


@pytest.mark.parametrize("values, message", [
    ({"model": "gan"}, "unknown model 'gan'"),
    ({"objective": "kl"}, "unknown objective 'kl'"),
    ({"binarize": "static"}, "unknown binarize mode"),
    ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
    ({"model": "autoencoder", "objective": "paper"}, "cannot train on objective 'paper'"),
    ({"latent_dim": 0}, "latent dim must be a whole number >= 1"),
    ({"batch_size": True}, "batch size must be a whole number"),
    ({"epochs": -1}, "epochs must be a whole number >= 0"),
    ({"hidden": ()}, "hidden sizes"),
    ({"hidden": (8, 0)}, "hidden sizes"),
    ({"lr": 0.0}, "learning rate must be a positive number"),
    ({"lr": float("nan")}, "learning rate"),
    ({"beta": -1.0}, "beta must be a number >= 0"),
    ({"beta": float("inf")}, "beta"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**values)


def test_parse_hidden():
    assert parse_hidden("512,256") == (512, 256) and parse_hidden(" 64 ") == (64,)
    assert parse_hidden("64,64") == (64, 64)  # widths may repeat
    for text in ("", "a,b", "0", "-3,4", "1.5", "10,,20", "10,", ",10", "1_0", "+5", "٣"):
        with pytest.raises(ConfigError, match="--hidden takes"):
            parse_hidden(text)


@pytest.mark.parametrize("values, message", [
    ({"prior": "mog:0", "objective": "elbo"}, "prior must be standard, mog:K or vamp:K"),
    ({"prior": "vamp:x", "objective": "elbo"}, "prior must be standard, mog:K or vamp:K"),
    ({"prior": "flow:3", "objective": "elbo"}, "prior must be standard, mog:K or vamp:K"),
    ({"prior": "mog:3"}, "a learned prior (mog:3) needs a VAE trained on elbo or iwae"),
    ({"k": 5, "objective": "elbo"}, "applies to the iwae objective only"),
    ({"k": 0, "objective": "iwae"}, "k (importance samples) must be a whole number >= 1"),
    ({"warmup": -1}, "warmup must be a whole number of epochs >= 0"),
    ({"warmup": 2, "model": "autoencoder", "objective": "reconstruction"}, "has no KL term"),
    ({"lr_schedule": "step"}, "unknown learning-rate schedule 'step'"),
    ({"preset": "z9-best"}, "unknown preset 'z9-best'"),
])
def test_likelihood_options_are_checked(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**values)


def test_the_papers_defaults_stay_and_presets_expand_under_explicit_values():
    c = RunConfig()
    assert (c.k, c.prior, c.warmup, c.lr_schedule, c.preset) == (1, "standard", 0, "constant", None)
    old = {key: value for key, value in c.to_dict().items()
           if key not in ("k", "prior", "warmup", "lr_schedule", "preset")}
    assert RunConfig.from_dict(old) == c  # a config.json written before these options loads unchanged
    best = RunConfig.from_preset("z2-best", epochs=3, prior="mog:8")
    assert (best.objective, best.k, best.prior, best.epochs, best.preset) == ("iwae", 5, "mog:8", 3, "z2-best")
    assert RunConfig.from_dict(best.to_dict()) == best
    with pytest.raises(ConfigError, match="unknown preset"):
        RunConfig.from_preset("nope")
