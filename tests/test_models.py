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


# --- the prior p(z) ---------------------------------------------------------------------------------

def vae_with(prior: str, latent_dim: int = 2, n_pixels: int = 12, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    model = VAE(n_pixels=n_pixels, latent_dim=latent_dim, hidden=(16,), prior=prior)
    with torch.no_grad():  # move the learned parameters off their start values
        for p in model.prior.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return model


def test_standard_prior_is_the_papers_and_adds_nothing_to_the_weights():
    torch.manual_seed(0)
    plain = VAE(n_pixels=12, latent_dim=2, hidden=(16,))
    torch.manual_seed(0)
    mog = VAE(n_pixels=12, latent_dim=2, hidden=(16,), prior="mog:3")
    assert set(mog.state_dict()) - set(plain.state_dict()) == {"prior.means", "prior.log_scales"}
    for name, value in plain.state_dict().items():  # the other weights are drawn as with N(0, I)
        assert torch.equal(value, mog.state_dict()[name]), name
    z = torch.randn(6, 2)
    reference = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(plain.log_prior(z), reference)


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_mixture_prior_matches_torch_distributions(latent_dim):
    model = vae_with("mog:4", latent_dim)
    means, scales = model.prior.means.detach(), model.prior.log_scales.detach().exp()
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(4)),
        torch.distributions.Independent(torch.distributions.Normal(means, scales), 1))
    z = 3 * torch.randn(50, latent_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.log_prior(z), reference.log_prob(z))
    torch.testing.assert_close(model.log_prior(z.double()), reference.log_prob(z.double()).float().double(),
                               atol=1e-5, rtol=0)  # float64 for the quadrature
    assert model.log_prior(z.reshape(5, 10, latent_dim)).shape == (5, 10)  # any leading shape


def test_vamp_prior_is_the_mean_of_the_encoders_posteriors_at_the_pseudo_inputs():
    model = vae_with("vamp:5")
    u = torch.sigmoid(model.prior.raw_inputs.detach())  # (5, P) pseudo-images in [0, 1]
    assert torch.equal(model.prior.pseudo_inputs().detach(), u)
    z = 2 * torch.randn(30, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        densities = []
        for k in range(5):  # one pseudo-input at a time, straight through the encoder
            m, logvar = model.encode(u[k:k + 1])  # σ is the log variance (elbo / iwae)
            q = torch.distributions.Independent(torch.distributions.Normal(m[0], (0.5 * logvar[0]).exp()), 1)
            densities.append(q.log_prob(z).exp())
        reference = torch.stack(densities).mean(0).log()
    torch.testing.assert_close(model.log_prior(z).detach(), reference, rtol=1e-5, atol=1e-5)
    # gradients reach the pseudo-inputs and the encoder through log p(z)
    model.log_prior(z).sum().backward()
    assert model.prior.raw_inputs.grad.abs().sum() > 0 and model.to_stats.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", ["standard", "mog:3", "vamp:4"])
def test_prior_samples_follow_the_prior(prior):
    from vaelab.models import sample_images

    model = vae_with(prior)
    z = model.sample_prior(20000, torch.Generator().manual_seed(3)).detach()
    means, logvars = (t.detach() for t in model.prior.components(model))
    expected_mean = means.mean(0)  # equal weights
    expected_var = (logvars.exp() + means.square()).mean(0) - expected_mean.square()
    torch.testing.assert_close(z.mean(0), expected_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(0), expected_var, atol=0.05, rtol=0.05)
    images = sample_images(model, 4, seed=0)
    assert images.shape == (4, 12) and torch.equal(images, sample_images(model, 4, seed=0))


def test_standard_prior_samples_are_the_same_draws_as_before():
    from vaelab.models import decode_to_pixels, sample_images

    model = vae_with("standard")
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample_images(model, 8, seed=5), decode_to_pixels(model, z))


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


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_the_grid_follows_a_learned_prior_and_is_the_quantile_grid_otherwise(latent_dim):
    from vaelab.models import prior_grid, quantile_grid

    plain = vae_with("standard", latent_dim)
    assert torch.equal(prior_grid(plain, 5, latent_dim), quantile_grid(5, latent_dim)[0])
    mog = vae_with("mog:2", latent_dim)
    with torch.no_grad():  # all of p(z) far from N(0, I)'s grid: around (8, -6), scale 0.5
        mog.prior.means.copy_(torch.tensor([8.0, -6.0])[:latent_dim].expand(2, latent_dim))
        mog.prior.log_scales.fill_(math.log(0.5))
    grid = prior_grid(mog, 9, latent_dim)
    assert grid.shape == quantile_grid(9, latent_dim)[0].shape
    # the middle code is at the prior's median, the outer ones at its 1/18 and 17/18 quantiles
    normal = torch.distributions.Normal(torch.tensor([8.0, -6.0])[:latent_dim], 0.5)
    expected = normal.icdf(torch.tensor([[0.5 / 9], [0.5], [1 - 0.5 / 9]]))  # (3, D)
    axes = grid[[0, 4, 8]] if latent_dim == 1 else torch.stack([grid[[36, 40, 44], 0], grid[[76, 40, 4], 1]], 1)
    torch.testing.assert_close(axes, expected, atol=0.03, rtol=0)
    assert mog.log_prior(grid).min() > mog.log_prior(quantile_grid(9, latent_dim)[0]).max()
