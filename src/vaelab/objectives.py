"""Pixel likelihoods p(x|z) and the training objectives, as pure functions returning per-example
terms in nats.

Likelihoods (each written once, used by training and by likelihood.py alike): Bernoulli for binary
pixels; for intensities in [0, 1] the continuous Bernoulli of Loaiza-Ganem & Cunningham (2019) and a
Gaussian with a learned per-pixel scale. `paper` is eq. (2)-(3) of the paper exactly; `elbo` is
Kingma & Welling (2014), App. B; `iwae` is the importance-weighted bound of Burda et al. (2016).
Each objective returns a dict of named tensors of shape (N,); the caller reduces (mean over images).
The prior p(z) is the model's own (`model.log_prior`, models.py): N(0, I) unless the model learned one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

Terms = dict[str, torch.Tensor]

LOG_2PI = math.log(2 * math.pi)
# |logit| below this: the continuous Bernoulli's log C and mean by their Taylor series around λ = ½, where
# the closed forms divide 0 by 0 (|λ − ½| < 0.025; the series' first omitted term is below 1e-9 there)
CB_TAYLOR_BELOW = 0.1
# The Gaussian's smallest scale: one 8-bit quantisation step. Pixels that never change (a black border)
# would otherwise drive their scale to 0 and the density to infinity.
GAUSSIAN_MIN_SCALE = 1 / 256
# What each likelihood is, as every reported number names it.
LIKELIHOOD_NAMES = {
    "bernoulli": "Bernoulli (binary pixels)",
    "continuous-bernoulli": "continuous Bernoulli (intensities in [0, 1])",
    "gaussian": "Gaussian with a learned per-pixel scale (intensities in [0, 1])",
}


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) for Bernoulli pixels, summed over pixels: (N, P), (N, P) -> (N,) nats.

    Σ_p softplus(l_p) − x_p·l_p: binary cross-entropy with logits, summed. For grayscale x in [0, 1] this
    is the cross-entropy the pytorch/examples VAE uses, which is not a normalised density of x (the
    continuous Bernoulli below is that cross-entropy normalised). Logits of a lower precision (autocast)
    are promoted to x's dtype first.
    """
    return _BernoulliNLL.apply(logits.to(torch.promote_types(logits.dtype, x.dtype)), x)


class _BernoulliNLL(torch.autograd.Function):
    """bernoulli_nll in three passes over (N, P) forward and three backward, where torch's
    binary_cross_entropy_with_logits(reduction="none").sum(-1) takes about ten: it is the largest
    elementwise work of a training step (the decoder's output is the widest tensor). Same values up to
    float rounding (tests compare it with torch's). First derivatives only."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        with torch.autocast(logits.device.type, enabled=False):
            return F.softplus(logits).sum(-1) - torch.linalg.vecdot(x, logits)  # (N,)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (N,)
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_x = -logits * grad if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(λ) per pixel for λ = sigmoid(logits), (...) -> (...) nats (Loaiza-Ganem & Cunningham 2019, eq. 7).

    C(λ) = 2·artanh(1 − 2λ) / (1 − 2λ), and C(½) = 2. With l = logit(λ), 1 − 2λ = −tanh(l/2) and
    artanh(1 − 2λ) = −l/2, so C = l / tanh(l/2): log C = log|l| − log tanh(|l|/2), computed with expm1 /
    log1p so that it stays exact for large |l|; near l = 0 (λ near ½), where both logs diverge, the
    series log 2 + l²/12 − 7·l⁴/1440 (error < 4e-10 for |l| < 0.1; the test compares it in float64).
    """
    a = logits.abs()
    small = a < CB_TAYLOR_BELOW
    safe = torch.where(small, torch.ones_like(a), a)  # keeps the unused branch finite (and its gradient)
    exact = safe.log() - (torch.log(-torch.expm1(-safe)) - torch.log1p(torch.exp(-safe)))
    l2 = torch.where(small, a, torch.zeros_like(a)).square()
    series = math.log(2) + l2 / 12 - 7 * l2.square() / 1440
    return torch.where(small, series, exact)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli, (...) -> (...) in [0, 1]: λ/(2λ − 1) + 1/(2·artanh(1 − 2λ)),
    which with l = logit(λ) is sigmoid(l)/tanh(l/2) − 1/l; near l = 0 the series ½ + l/12 − l³/720.

    Not λ itself: an image drawn as λ would be biased towards 0 and 1."""
    small = logits.abs() < CB_TAYLOR_BELOW
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe
    near = torch.where(small, logits, torch.zeros_like(logits))
    series = 0.5 + near / 12 - near ** 3 / 720
    return torch.where(small, series, exact)


def gaussian_scale(raw_scale: torch.Tensor) -> torch.Tensor:
    """The Gaussian's per-pixel standard deviation from its free parameter: softplus + GAUSSIAN_MIN_SCALE."""
    return F.softplus(raw_scale) + GAUSSIAN_MIN_SCALE


def pixel_log_prob(likelihood: str, logits: torch.Tensor, x: torch.Tensor, *,
                   raw_scale: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z) summed over pixels: decoder outputs (..., P) and images (..., P) -> (...) nats.

    `likelihood`: "bernoulli" (logits of the pixel probabilities), "continuous-bernoulli" (logits of λ;
    the normalised Bernoulli cross-entropy) or "gaussian" (mean sigmoid(logits), standard deviation
    gaussian_scale(raw_scale) with raw_scale (P,) learned per pixel). A density for the continuous
    ones: it may exceed 1 per pixel, so their nats may be negative.
    """
    if likelihood in ("bernoulli", "continuous-bernoulli"):
        logits, x = torch.broadcast_tensors(logits, x)
    if likelihood == "bernoulli":
        return -bernoulli_nll(logits, x)
    if likelihood == "continuous-bernoulli":
        return (continuous_bernoulli_log_norm(logits)
                - F.binary_cross_entropy_with_logits(logits, x, reduction="none")).sum(-1)
    if likelihood == "gaussian":
        scale = gaussian_scale(raw_scale)  # (P,)
        z = (x - torch.sigmoid(logits)) / scale
        return -(0.5 * z.square() + scale.log() + 0.5 * LOG_2PI).sum(-1)
    raise ValueError(f"unknown likelihood {likelihood!r}; choose one of: {', '.join(LIKELIHOOD_NAMES)}")


def affine_log_prob(likelihood: str, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, offset), each (..., P), with log p(x|z) = Σ_p x_p·weight_p + offset_p for every image x, or
    None where log p(x|z) is not affine in x (the Gaussian).

    Both Bernoulli forms are: x·log λ + (1 − x)·log(1 − λ) = x·l − softplus(l), plus log C(λ) for the
    continuous one. likelihood.py uses this to score many images against many codes with one matrix
    product; tests check it against `pixel_log_prob`.
    """
    if likelihood == "bernoulli":
        return logits, -F.softplus(logits)
    if likelihood == "continuous-bernoulli":
        return logits, continuous_bernoulli_log_norm(logits) - F.softplus(logits)
    return None


def pixel_mean(likelihood: str, logits: torch.Tensor) -> torch.Tensor:
    """E[x|z] per pixel, (..., P) -> (..., P) in [0, 1]: the image a decoder's output stands for."""
    if likelihood == "continuous-bernoulli":
        return continuous_bernoulli_mean(logits)
    return torch.sigmoid(logits)  # Bernoulli probability; the Gaussian's mean is sigmoid(logits) too


def decoder_nll(model: nn.Module, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log p(x|z) under the model's own likelihood, codes z (N, D) and images x (N, P) -> (N,) nats."""
    logits = model.decode(z)  # (N, P)
    likelihood = getattr(model, "likelihood", "bernoulli")  # (a model without one: Bernoulli, as always)
    if likelihood == "bernoulli":
        return bernoulli_nll(logits, x)  # written this way since vaelab 0.1: the paper's numbers, bit for bit
    return -pixel_log_prob(likelihood, logits, x, raw_scale=model.decoder.raw_scale)


def bits_per_dim(nats: float, n_dims: int) -> float:
    """Nats per image -> bits per dimension: nats / (ln 2 · C·H·W)."""
    return nats / (math.log(2) * n_dims)


def paper_penalty(m: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Eq. (3): Σ_i (exp(σ_i) − (1 + σ_i) + m_i²), (N, D), (N, D) -> (N,).

    This equals 2·KL(N(m, exp(σ)) ‖ N(0, 1)) when σ is the log-*variance* of q. But eq. (2) draws
    c = exp(σ)·e + m, using exp(σ) as the *standard deviation*, so with the paper's noise the
    penalty is not twice the KL of the q actually sampled, and the paper's loss is not the
    negative ELBO. vaelab implements the paper as written; `elbo` is the standard objective.
    """
    return (sigma.exp() - (1 + sigma) + m.square()).sum(-1)


def gaussian_kl(m: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(m, exp(logvar)) ‖ N(0, I)) in closed form, (N, D), (N, D) -> (N,) nats."""
    return 0.5 * (logvar.exp() + m.square() - 1 - logvar).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension: (..., D) -> (...,) nats."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


def log_normal(z: torch.Tensor, m: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; m, diag(exp(logvar))) summed over the last dimension; broadcasts: (..., D) -> (...,) nats."""
    return -0.5 * ((z - m).square() * (-logvar).exp() + logvar + LOG_2PI).sum(-1)


def log_prior(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """log p(z) of the model's prior, (..., D) -> (...,) nats: `model.log_prior` (models.py), N(0, I) for a
    model without one."""
    own = getattr(model, "log_prior", None)
    return own(z) if own is not None else log_standard_normal(z)


def learned_prior(model: nn.Module) -> bool:
    """Whether the model's p(z) is learned (mog, vamp) rather than N(0, I), whose KL has a closed form."""
    return getattr(getattr(model, "prior", None), "kind", "standard") != "standard"


# What the encoder's second output σ means under each objective, as the log variance of q(z|x):
# `paper` draws c = exp(σ)·e + m (eq. 2), so exp(σ) is the standard deviation and log variance = 2σ;
# `elbo` reads σ as the log variance itself. The autoencoder and PCA define no q.
# `iwae` uses the same q(z|x) as `elbo`.
LOG_VARIANCE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "paper": lambda sigma: 2 * sigma,
    "elbo": lambda logvar: logvar,
    "iwae": lambda logvar: logvar,
}


def noise_shape(objective: str, batch: int, latent_dim: int, *, k: int = 1) -> tuple[int, ...] | None:
    """The standard normal draws e a noisy objective takes for `batch` images (the trainer draws them for
    a global batch; DDP splits them along the first dimension, as the images): (B, D) for `paper` and
    `elbo`, (B, K, D) for `iwae` with K samples per image; None for the deterministic objectives."""
    if objective == "iwae":
        return (batch, k, latent_dim)
    if objective in LOG_VARIANCE:
        return (batch, latent_dim)
    return None


def posterior(model: nn.Module, objective: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's own q(z|x) = N(m, exp(logvar)) for images x (N, P): returns m, logvar, (N, D) each."""
    if objective not in LOG_VARIANCE:
        raise ValueError(f"objective {objective!r} defines no posterior q(z|x); only {', '.join(LOG_VARIANCE)} do")
    m, second = model.encode(x)  # (N, D) each
    return m, LOG_VARIANCE[objective](second)


def squared_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_pixels (x̂ − x)², (N, P), (N, P) -> (N,): the metric shared by every model, PCA included."""
    return (x_hat - x).square().sum(-1)


def _noise(like: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None,
           shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The standard normal draws e, shaped like m (or `shape`): given (drawn by the trainer for a whole
    global batch, see distributed.py), or drawn here from `generator`."""
    if noise is not None:
        return noise
    return torch.randn(shape or like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _kl_sample(model: nn.Module, z: torch.Tensor, e: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z|x) − log p(z) at the draws z = m + exp(½·logvar)·e: (N, [K,] D) -> (N, [K]) nats, the
    one-sample estimate of KL(q ‖ p) that a learned prior (no closed form) uses."""
    log_q = log_standard_normal(e) - 0.5 * logvar.sum(-1)  # density of z = m + std·e
    return log_q - log_prior(model, z)


def paper_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> Terms:
    """Eq. (2)-(3): e ~ N(0, 1), c = exp(σ)·e + m, loss = −log p(x|c) + β·paper_penalty (Bernoulli: BCE)."""
    m, sigma = model.encode(x)  # (N, D) each
    c = sigma.exp() * _noise(m, generator, noise) + m
    reconstruction = decoder_nll(model, c, x)
    regularizer = paper_penalty(m, sigma)
    return {"loss": reconstruction + beta * regularizer, "reconstruction": reconstruction,
            "regularizer": regularizer}


def elbo_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> Terms:
    """Negative ELBO (β-weighted): z = m + exp(½·logvar)·e, loss = −log p(x|z) + β·KL(q ‖ p).

    KL(q ‖ N(0, I)) in closed form for the standard prior; for a learned prior (mog, vamp) its one-sample
    estimate log q(z|x) − log p(z) at the same z (so `iwae` with k = 1 is this objective exactly)."""
    m, logvar = model.encode(x)  # (N, D) each
    e = _noise(m, generator, noise)  # (N, D)
    z = m + (0.5 * logvar).exp() * e
    reconstruction = decoder_nll(model, z, x)
    regularizer = _kl_sample(model, z, e, logvar) if learned_prior(model) else gaussian_kl(m, logvar)
    return {"loss": reconstruction + beta * regularizer, "reconstruction": reconstruction,
            "regularizer": regularizer}


def iwae_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, k: int = 1,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> Terms:
    """The importance-weighted bound (Burda et al. 2016) with k samples, β-weighted, as a loss:

        loss = −log (1/k) Σ_i exp(log p(x|z_i) − β·(log q(z_i|x) − log p(z_i))),  z_i = m + exp(½·logvar)·e_i,

    with the `elbo`'s q(z|x) = N(m, exp(logvar)) and noise e (N, k, D). β = 1 is −IWAE_k, an upper bound
    on −log p(x) that tightens as k grows; k = 1 is the one-sample negative ELBO. Terms, (N,) nats each:
    "reconstruction" the mean over the k draws of −log p(x|z_i), "regularizer" the mean of
    log q − log p (a KL estimate); loss <= reconstruction + β·regularizer, equal for k = 1.
    """
    m, logvar = model.encode(x)  # (N, D) each
    e = _noise(m, generator, noise, noise_shape("iwae", len(m), m.shape[-1], k=k))  # (N, k, D)
    z = m[:, None] + (0.5 * logvar)[:, None].exp() * e  # (N, k, D)
    n, k, d = z.shape
    # −log p(x|z_i) under the model's pixel likelihood, (N, k)
    reconstruction = decoder_nll(model, z.reshape(n * k, d), x.repeat_interleave(k, 0)).reshape(n, k)
    kl = _kl_sample(model, z, e, logvar[:, None])  # (N, k)
    log_w = -reconstruction - beta * kl  # (N, k)
    loss = math.log(k) - torch.logsumexp(log_w, 1)
    return {"loss": loss, "reconstruction": reconstruction.mean(1), "regularizer": kl.mean(1)}


def reconstruction_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, noise: torch.Tensor | None = None,
                             generator: torch.Generator | None = None) -> Terms:
    """The autoencoder's loss: the same reconstruction term (its likelihood's −log p(x|z)), no regulariser."""
    reconstruction = decoder_nll(model, model.encode(x), x)
    return {"loss": reconstruction, "reconstruction": reconstruction,
            "regularizer": torch.zeros_like(reconstruction)}


def squared_error_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, noise: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> Terms:
    """PCA's criterion: squared reconstruction error (minimised in closed form by PCA.fit)."""
    error = squared_error(model.reconstruct(x), x)
    return {"loss": error, "reconstruction": error, "regularizer": torch.zeros_like(error)}


OBJECTIVES: dict[str, Callable[..., Terms]] = {
    "paper": paper_objective,
    "elbo": elbo_objective,
    "iwae": iwae_objective,
    "reconstruction": reconstruction_objective,
    "squared-error": squared_error_objective,
}


def objective_function(objective: str, *, k: int = 1) -> Callable[..., Terms]:
    """OBJECTIVES[objective] with its own options bound (iwae's k): called as f(model, x, *, beta, noise,
    generator) like every objective."""
    if objective == "iwae":
        return functools.partial(OBJECTIVES["iwae"], k=k)
    return OBJECTIVES[objective]


@torch.no_grad()
def evaluate_objective(model: nn.Module, objective: str, x: torch.Tensor, *, beta: float = 1.0,
                       seed: int = 1234, batch_size: int = 2000, k: int = 1,
                       precision: str = "float32") -> dict[str, float]:
    """Mean over the images x (N, P) of each term, plus the common squared-error metric.

    The noise comes from a generator seeded with `seed`, so the result is a deterministic function
    of the weights: the value logged during training is the value `vaelab evaluate` prints.
    Returns nats per image (squared error in squared pixel units per image). `k`: iwae's samples.
    `precision` "bfloat16": the forward passes under bfloat16 autocast (the caller checks that the
    device computes it natively); the sums stay float64 either way.
    """
    function = objective_function(objective, k=k)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            terms = function(model, batch, beta=beta, generator=generator)
            terms["squared_error"] = squared_error(model.reconstruct(batch), batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.double().sum()
    model.train(was_training)
    return {k: float(v) / len(x) for k, v in sums.items()}
