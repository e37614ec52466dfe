"""Objectives against hand-computed values and independent references (torch.distributions, Monte Carlo)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaelab.models import VAE
from vaelab.objectives import (
    bernoulli_nll,
    elbo_objective,
    evaluate_objective,
    gaussian_kl,
    iwae_objective,
    log_normal,
    noise_shape,
    paper_objective,
    paper_penalty,
    reconstruction_objective,
    squared_error,
)


class FixedEncoder(nn.Module):
    """encode() returns fixed (m, σ); decode() is a fixed linear map: everything checkable by hand."""

    def __init__(self, m, sigma, weight):
        super().__init__()
        self.m, self.sigma, self.weight = torch.tensor(m), torch.tensor(sigma), torch.tensor(weight)

    def encode(self, x):
        return self.m.expand(len(x), -1), self.sigma.expand(len(x), -1)

    def decode(self, z):
        return z @ self.weight

    def reconstruct(self, x):
        return torch.sigmoid(self.decode(self.encode(x)[0]))


def test_bernoulli_nll_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    x = torch.tensor([[1.0, 0.0, 1.0]])
    expected = math.log(2) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(1))
    assert bernoulli_nll(logits, x).item() == pytest.approx(expected, rel=1e-6)


def test_bernoulli_nll_matches_torchs_cross_entropy_in_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 784, generator=generator, dtype=torch.float64) * 30).requires_grad_()  # |l| up to ~100
    for x in ((torch.rand(64, 784, generator=generator, dtype=torch.float64) < 0.3).double(),  # binary
              torch.rand(64, 784, generator=generator, dtype=torch.float64).requires_grad_()):  # grayscale
        ours = bernoulli_nll(logits, x)
        torchs = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        torch.testing.assert_close(ours, torchs)
        weights = torch.randn(64, generator=generator, dtype=torch.float64)
        wrt = (logits, x) if x.requires_grad else (logits,)
        ours_grads = torch.autograd.grad((ours * weights).sum(), wrt)
        torchs_grads = torch.autograd.grad((torchs * weights).sum(), wrt)
        for a, b in zip(ours_grads, torchs_grads, strict=True):
            torch.testing.assert_close(a, b)
    small = (torch.randn(3, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    gray = torch.rand(3, 5, generator=generator, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(bernoulli_nll, (small, gray))


def test_bernoulli_nll_promotes_autocast_logits_and_broadcasts():
    x = (torch.rand(4, 10) < 0.5).float()
    logits = torch.randn(4, 10)
    expected = F.binary_cross_entropy_with_logits(logits.bfloat16().float(), x, reduction="none").sum(-1)
    got = bernoulli_nll(logits.bfloat16(), x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    row = logits[:1].requires_grad_()
    shared = bernoulli_nll(*torch.broadcast_tensors(row, x))  # one code's logits against four images
    torch.testing.assert_close(shared, F.binary_cross_entropy_with_logits(row.expand(4, -1), x,
                                                                         reduction="none").sum(-1))
    shared.sum().backward()
    assert row.grad.shape == (1, 10)


def test_paper_penalty_by_hand():
    m = torch.tensor([[1.0, -2.0]])
    sigma = torch.tensor([[0.0, 1.0]])
    # (e^0 - 1 - 0 + 1) + (e^1 - 2 + 4)
    assert paper_penalty(m, sigma).item() == pytest.approx(1 + math.e + 2, rel=1e-6)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(m, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(m), torch.ones_like(m))
    reference = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(gaussian_kl(m, logvar), reference)


def test_gaussian_kl_matches_monte_carlo():
    m, logvar = torch.tensor([[0.7, -1.2]]), torch.tensor([[-0.5, 0.8]])
    std = (0.5 * logvar).exp()
    z = m + std * torch.randn(400_000, 2, generator=torch.Generator().manual_seed(1))
    log_q = torch.distributions.Normal(m, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    estimate = (log_q - log_p).mean().item()
    assert estimate == pytest.approx(gaussian_kl(m, logvar).item(), abs=0.01)


def test_paper_penalty_is_twice_kl_when_sigma_is_log_variance():
    g = torch.Generator().manual_seed(2)
    m, s = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    torch.testing.assert_close(paper_penalty(m, s), 2 * gaussian_kl(m, s))


def test_paper_objective_uses_exp_sigma_as_standard_deviation():
    model = FixedEncoder([0.5, -1.0], [0.3, -0.7], [[1.0, -2.0, 0.5], [0.2, 0.1, -1.0]])
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    terms = paper_objective(model, x, beta=0.5, generator=torch.Generator().manual_seed(3))
    e = torch.randn(2, 2, generator=torch.Generator().manual_seed(3))
    c = torch.tensor([0.3, -0.7]).exp() * e + torch.tensor([0.5, -1.0])  # eq. (2)
    recon = bernoulli_nll(c @ model.weight, x)
    penalty = (math.exp(0.3) - 1.3 + 0.25) + (math.exp(-0.7) - 0.3 + 1.0)  # eq. (3) by hand
    torch.testing.assert_close(terms["reconstruction"], recon)
    torch.testing.assert_close(terms["regularizer"], torch.full((2,), penalty))
    torch.testing.assert_close(terms["loss"], recon + 0.5 * penalty)


def test_elbo_objective_uses_half_log_variance():
    model = FixedEncoder([0.5, -1.0], [0.3, -0.7], [[1.0, -2.0, 0.5], [0.2, 0.1, -1.0]])
    x = torch.tensor([[1.0, 0.0, 1.0]])
    terms = elbo_objective(model, x, generator=torch.Generator().manual_seed(4))
    e = torch.randn(1, 2, generator=torch.Generator().manual_seed(4))
    z = torch.tensor([0.5, -1.0]) + (0.5 * torch.tensor([0.3, -0.7])).exp() * e
    torch.testing.assert_close(terms["reconstruction"], bernoulli_nll(z @ model.weight, x))
    torch.testing.assert_close(terms["regularizer"], gaussian_kl(torch.tensor([[0.5, -1.0]]),
                                                                 torch.tensor([[0.3, -0.7]])))
    torch.testing.assert_close(terms["loss"], terms["reconstruction"] + terms["regularizer"])


def test_reconstruction_objective_has_no_regulariser():
    class Deterministic(nn.Module):
        def encode(self, x):
            return x[:, :1] * 2

        def decode(self, z):
            return z.expand(-1, 3)

    x = torch.tensor([[1.0, 0.0, 1.0]])
    terms = reconstruction_objective(Deterministic(), x)
    torch.testing.assert_close(terms["loss"], bernoulli_nll(torch.full((1, 3), 2.0), x))
    assert terms["regularizer"].abs().sum() == 0


def test_squared_error_by_hand():
    assert squared_error(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.25)


def test_evaluate_objective_is_deterministic_and_per_image():
    model = FixedEncoder([0.5, -1.0], [0.3, -0.7], [[1.0, -2.0, 0.5], [0.2, 0.1, -1.0]])
    x = torch.bernoulli(torch.full((50, 3), 0.5), generator=torch.Generator().manual_seed(5))
    a = evaluate_objective(model, "paper", x, seed=7, batch_size=16)
    b = evaluate_objective(model, "paper", x, seed=7, batch_size=16)
    assert a == b
    one_batch = evaluate_objective(model, "paper", x, seed=7, batch_size=1000)
    whole = paper_objective(model, x, generator=torch.Generator().manual_seed(7))
    assert one_batch["loss"] == pytest.approx(whole["loss"].mean().item(), rel=1e-5)
    assert a["regularizer"] == pytest.approx(whole["regularizer"].mean().item(), rel=1e-5)
    assert set(a) == {"loss", "reconstruction", "regularizer", "squared_error"}


# --- IWAE (Burda et al. 2016) and the ELBO with a learned prior -------------------------------------

def small_vae(prior: str = "standard", seed: int = 0) -> VAE:
    """An untrained VAE on 6 pixels whose decoder varies sharply with z: q(z|x) is far from p(z|x)."""
    torch.manual_seed(seed)
    model = VAE(n_pixels=6, latent_dim=2, hidden=(8,), prior=prior)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model


def test_noise_shape_is_declared_by_the_objective():
    assert noise_shape("paper", 8, 2) == noise_shape("elbo", 8, 2) == (8, 2)
    assert noise_shape("iwae", 8, 2, k=5) == (8, 5, 2)
    assert noise_shape("reconstruction", 8, 2) is None and noise_shape("squared-error", 8, 2) is None


def test_log_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(9)
    z, m, logvar = torch.randn(4, 3, 2, generator=g), torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    reference = torch.distributions.Normal(m, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal(z, m, logvar), reference)


@pytest.mark.parametrize("prior", ["mog:3", "vamp:4"])
def test_iwae_with_one_sample_is_the_elbo_exactly_with_the_same_noise(prior):
    model = small_vae(prior)
    x = torch.bernoulli(torch.full((10, 6), 0.4), generator=torch.Generator().manual_seed(1))
    e = torch.randn(10, 2, generator=torch.Generator().manual_seed(2))
    elbo = elbo_objective(model, x, beta=0.7, noise=e)
    iwae = iwae_objective(model, x, beta=0.7, k=1, noise=e[:, None])
    for name in ("loss", "reconstruction", "regularizer"):
        assert torch.equal(iwae[name], elbo[name]), name
    # the learned prior's KL is the one-sample estimate log q(z|x) − log p(z) at the same z
    m, logvar = model.encode(x)
    z = m + (0.5 * logvar).exp() * e
    torch.testing.assert_close(elbo["regularizer"], log_normal(z, m, logvar) - model.log_prior(z))


def test_iwae_with_one_sample_and_the_standard_prior_estimates_the_elbos_closed_form_kl():
    model = small_vae()
    x = torch.bernoulli(torch.full((3, 6), 0.4), generator=torch.Generator().manual_seed(1))
    e = torch.randn(3, 1, 2, generator=torch.Generator().manual_seed(2))
    elbo = elbo_objective(model, x, noise=e[:, 0])
    iwae = iwae_objective(model, x, k=1, noise=e)
    assert torch.equal(iwae["reconstruction"], elbo["reconstruction"])  # same z, same decoder term
    torch.testing.assert_close(iwae["loss"], iwae["reconstruction"] + iwae["regularizer"])
    # in expectation over the noise the sampled KL is the closed form
    draws = torch.randn(3, 200_000, 2, generator=torch.Generator().manual_seed(4))
    m, logvar = model.encode(x)
    z = m[:, None] + (0.5 * logvar)[:, None].exp() * draws
    sampled_kl = (log_normal(z, m[:, None], logvar[:, None]) - model.log_prior(z)).mean(1)
    torch.testing.assert_close(sampled_kl, elbo["regularizer"], atol=0.02, rtol=0)


@pytest.mark.parametrize("prior", ["standard", "mog:3"])
def test_iwae_bound_tightens_with_k_on_a_fixed_model(prior):
    """E[IWAE_k] is non-increasing in k (Burda et al. 2016, Thm. 1); the steps are far above the Monte Carlo error."""
    model = small_vae(prior)
    x = torch.bernoulli(torch.full((20, 6), 0.4), generator=torch.Generator().manual_seed(1)).repeat(200, 1)
    with torch.no_grad():
        means = {k: float(iwae_objective(model, x, k=k, generator=torch.Generator().manual_seed(k))["loss"].mean())
                 for k in (1, 2, 5, 50)}
    assert means[1] > means[2] + 0.5 and means[2] > means[5] + 0.3 and means[5] > means[50] + 0.1, means


def test_evaluate_objective_passes_k_to_iwae():
    model = small_vae("mog:2")
    x = torch.bernoulli(torch.full((40, 6), 0.4), generator=torch.Generator().manual_seed(1))
    one = evaluate_objective(model, "iwae", x, seed=3, k=1)
    many = evaluate_objective(model, "iwae", x, seed=3, k=20)
    assert many["loss"] < one["loss"] and evaluate_objective(model, "iwae", x, seed=3, k=20) == many


# --- pixel likelihoods: each a normalised density (or distribution) of one pixel --------------------

def _trapezoid(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((f[1:] + f[:-1]) / 2 * (x[1:] - x[:-1])[:, None]).sum(0)


def test_continuous_bernoulli_integrates_to_one_for_every_lambda():
    from vaelab.objectives import pixel_log_prob

    logits = torch.tensor([-30.0, -8.0, -1.0, -0.1, -1e-3, 0.0, 1e-4, 0.05, 0.0999, 0.1001, 2.0, 15.0],
                          dtype=torch.float64)
    x = torch.linspace(0, 1, 200001, dtype=torch.float64)  # (X,)
    density = pixel_log_prob("continuous-bernoulli", logits[None, :, None], x[:, None, None]).exp()  # (X, L)
    torch.testing.assert_close(_trapezoid(density, x), torch.ones_like(logits), atol=2e-6, rtol=0)


def test_continuous_bernoulli_log_norm_series_meets_the_closed_form():
    from vaelab.objectives import CB_TAYLOR_BELOW, continuous_bernoulli_log_norm, continuous_bernoulli_mean

    logit = torch.tensor([1e-8, 1e-3, 0.05, CB_TAYLOR_BELOW * 0.999, CB_TAYLOR_BELOW * 1.001, 0.5, 4.0, -0.07],
                     dtype=torch.float64)
    closed = torch.log(logit / torch.tanh(logit / 2))  # C(λ) = l / tanh(l/2), exact in float64 away from l = 0
    torch.testing.assert_close(continuous_bernoulli_log_norm(logit)[1:], closed[1:], atol=1e-9, rtol=0)
    assert abs(float(continuous_bernoulli_log_norm(torch.zeros(1))) - math.log(2)) < 1e-7  # C(½) = 2
    lam = torch.sigmoid(logit)
    closed_mean = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))
    torch.testing.assert_close(continuous_bernoulli_mean(logit)[2:], closed_mean[2:], atol=1e-9, rtol=0)
    # float32 near λ = ½ (where the closed forms are 0/0): finite, smooth and with finite gradients
    near = torch.linspace(-0.2, 0.2, 401, requires_grad=True)
    values = continuous_bernoulli_log_norm(near)
    values.sum().backward()
    assert torch.isfinite(values).all() and torch.isfinite(near.grad).all()
    assert (values.detach().diff().abs() < 1e-3).all()


def test_continuous_bernoulli_mean_is_the_mean_of_the_density():
    from vaelab.objectives import continuous_bernoulli_mean, pixel_log_prob

    logits = torch.tensor([-5.0, -0.3, 0.02, 1.5], dtype=torch.float64)
    x = torch.linspace(0, 1, 100001, dtype=torch.float64)
    density = pixel_log_prob("continuous-bernoulli", logits[None, :, None], x[:, None, None]).exp()
    torch.testing.assert_close(_trapezoid(density * x[:, None], x), continuous_bernoulli_mean(logits),
                               atol=1e-6, rtol=0)


def test_gaussian_integrates_to_one_and_its_scale_is_learned_per_pixel():
    from vaelab.objectives import GAUSSIAN_MIN_SCALE, gaussian_scale, pixel_log_prob

    logits = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    raw = torch.tensor([-6.0, -2.0, 0.5], dtype=torch.float64)  # one scale per pixel
    x = torch.linspace(-8, 10, 800001, dtype=torch.float64)  # ±8 of the widest scale (0.98)
    density = pixel_log_prob("gaussian", logits[None, :, None], x[:, None, None], raw_scale=raw[:, None]).exp()
    torch.testing.assert_close(_trapezoid(density, x), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(gaussian_scale(torch.tensor(-100.0))) == pytest.approx(GAUSSIAN_MIN_SCALE)
    reference = torch.distributions.Normal(torch.sigmoid(logits), gaussian_scale(raw)).log_prob(torch.full((3,), 0.3))
    torch.testing.assert_close(pixel_log_prob("gaussian", logits, torch.full((3,), 0.3), raw_scale=raw),
                               reference.sum())


def test_bernoulli_sums_to_one_and_affine_forms_equal_the_log_probs():
    from vaelab.objectives import affine_log_prob, pixel_log_prob

    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 3
    p0 = pixel_log_prob("bernoulli", logits[..., None], torch.zeros(1)).exp()
    p1 = pixel_log_prob("bernoulli", logits[..., None], torch.ones(1)).exp()
    torch.testing.assert_close(p0 + p1, torch.ones(4, 6))
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    for name in ("bernoulli", "continuous-bernoulli"):
        weight, offset = affine_log_prob(name, logits)
        torch.testing.assert_close((x * weight + offset).sum(-1), pixel_log_prob(name, logits, x))
    assert affine_log_prob("gaussian", logits) is None


def test_bits_per_dim():
    from vaelab.objectives import bits_per_dim

    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(-3072 * math.log(2) * 2, 3 * 32 * 32) == pytest.approx(-2.0)


@pytest.mark.parametrize("likelihood", ["continuous-bernoulli", "gaussian"])
def test_iwae_and_a_learned_prior_under_the_continuous_likelihoods(likelihood):
    """Issue 12 x issue 13: IWAE's reconstruction is the run's own pixel likelihood; k = 1 is the ELBO."""
    from vaelab.config import RunConfig
    from vaelab.models import init_model
    from vaelab.objectives import decoder_nll

    model = init_model(RunConfig(objective="iwae", k=2, prior="mog:3", likelihood=likelihood, binarize="none",
                                 arch="conv", image_shape=(1, 8, 8), hidden=(16,)))
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(1))
    e = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    elbo = elbo_objective(model, x, noise=e)
    iwae = iwae_objective(model, x, k=1, noise=e[:, None])
    for name in ("loss", "reconstruction", "regularizer"):
        assert torch.equal(iwae[name], elbo[name]), name
    m, logvar = model.encode(x)
    torch.testing.assert_close(elbo["reconstruction"], decoder_nll(model, m + (0.5 * logvar).exp() * e, x))
