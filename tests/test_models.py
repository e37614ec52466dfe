"""Models: shapes for any latent size, and PCA = the optimal rank-k reconstruction (Eckart-Young)."""

import math

import pytest
import torch

from vaelab.config import RunConfig
from vaelab.models import PCA, VAE, Autoencoder, build_model, decode_to_pixels, encode_mean


def test_pca_reconstruction_equals_rank_k_svd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = x.float()
    k = 3
    pca = PCA(n_pixels=12, latent_dim=k).fit(x)
    mean = x.double().mean(0)
    u, s, vt = torch.linalg.svd(x.double() - mean, full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vt[:k] + mean
    torch.testing.assert_close(pca.reconstruct(x).double(), best, atol=1e-4, rtol=1e-4)
    # Encoder W and decoder Wᵀ: orthonormal directions.
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(k), atol=1e-5, rtol=0)
    torch.testing.assert_close(pca.variances.double(), s[:k] ** 2 / (len(x) - 1), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
@pytest.mark.parametrize("kind", ["autoencoder", "vae", "pca"])
def test_shapes_for_any_latent_dim(kind, latent_dim):
    model = build_model(RunConfig(model=kind, objective={"pca": "squared-error", "autoencoder": "reconstruction",
                                                        "vae": "elbo"}[kind],
                                  latent_dim=latent_dim, hidden=(32, 16)))
    x = torch.rand(7, 784)
    z = encode_mean(model, x)
    assert z.shape == (7, latent_dim)
    assert model.decode(z).shape == (7, 784)
    pixels = decode_to_pixels(model, z)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert model.reconstruct(x).shape == (7, 784)


def test_hidden_sizes_are_configurable():
    vae = VAE(n_pixels=784, latent_dim=2, hidden=(64, 32, 16))
    widths = [m.out_features for m in vae.to_hidden.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 32, 16]
    m, sigma = vae.encode(torch.rand(3, 784))
    assert m.shape == sigma.shape == (3, 2)
    ae = Autoencoder(n_pixels=784, latent_dim=1, hidden=(10,))
    assert ae.encode(torch.rand(2, 784)).shape == (2, 1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 13, 7), (1, 5, 9)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_conv_models_take_any_image_shape(shape, likelihood):
    from vaelab.config import RunConfig
    from vaelab.models import init_model

    binarize = "dynamic" if likelihood == "bernoulli" else "none"
    for kind, objective in (("vae", "elbo"), ("autoencoder", "reconstruction")):
        config = RunConfig(model=kind, objective=objective, arch="conv", image_shape=shape, hidden=(32,),
                           latent_dim=3, likelihood=likelihood, binarize=binarize)
        model = init_model(config)
        x = torch.rand(4, math.prod(shape))
        z = model.encode(x)
        z = z[0] if isinstance(z, tuple) else z
        assert z.shape == (4, 3)
        assert model.decode(z).shape == (4, math.prod(shape))
        out = model.reconstruct(x)
        assert out.shape == (4, math.prod(shape)) and (out >= 0).all() and (out <= 1).all()
        assert ("decoder.raw_scale" in model.state_dict()) == (likelihood == "gaussian")


def test_conv_padding_does_not_leak_between_images():
    # a change in one image's pixels changes only that image's code
    from vaelab.config import RunConfig
    from vaelab.models import init_model

    model = init_model(RunConfig(arch="conv", image_shape=(3, 13, 7), hidden=(16,)))
    x = torch.rand(3, 3 * 13 * 7)
    m1 = model.encode(x)[0]
    x[1, -1] = 1 - x[1, -1]  # the last pixel: bottom-right, next to the padding
    m2 = model.encode(x)[0]
    assert torch.equal(m1[[0, 2]], m2[[0, 2]]) and not torch.equal(m1[1], m2[1])


def test_mlp_models_and_their_weights_are_as_before():
    # the paper's MLP VAE: same parameter names and order (checkpoints and seeded weights unchanged)
    vae = VAE(n_pixels=784, latent_dim=2, hidden=(512, 256))
    assert list(vae.state_dict()) == [
        "to_hidden.0.0.weight", "to_hidden.0.0.bias", "to_hidden.0.2.weight", "to_hidden.0.2.bias",
        "to_stats.weight", "to_stats.bias", "decoder.to_hidden.0.0.weight", "decoder.to_hidden.0.0.bias",
        "decoder.to_hidden.0.2.weight", "decoder.to_hidden.0.2.bias", "decoder.to_logits.weight",
        "decoder.to_logits.bias"]
