"""Training objectives as pure functions returning per-example terms in nats.

`paper` is eq. (2)-(3) of the paper exactly; `elbo` is Kingma & Welling (2014), App. B; `iwae` is the
importance-weighted bound of Burda et al. (2016). Each objective returns a dict of named tensors of
shape (N,); the caller reduces (mean over images). The prior p(z) is the model's own (`model.log_prior`,
models.py): N(0, I) unless the model learned one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Terms = dict[str, torch.Tensor]

LOG_2PI = math.log(2 * math.pi)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) for Bernoulli pixels, summed over pixels: (N, P), (N, P) -> (N,) nats.

    For grayscale x in [0, 1] this is the cross-entropy the pytorch/examples VAE uses.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


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
    """Eq. (2)-(3): e ~ N(0, 1), c = exp(σ)·e + m, loss = BCE(decode(c), x) + β·paper_penalty."""
    m, sigma = model.encode(x)  # (N, D) each
    c = sigma.exp() * _noise(m, generator, noise) + m
    reconstruction = bernoulli_nll(model.decode(c), x)
    regularizer = paper_penalty(m, sigma)
    return {"loss": reconstruction + beta * regularizer, "reconstruction": reconstruction,
            "regularizer": regularizer}


def elbo_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> Terms:
    """Negative ELBO (β-weighted): z = m + exp(½·logvar)·e, loss = BCE + β·KL(q ‖ p).

    KL(q ‖ N(0, I)) in closed form for the standard prior; for a learned prior (mog, vamp) its one-sample
    estimate log q(z|x) − log p(z) at the same z (so `iwae` with k = 1 is this objective exactly)."""
    m, logvar = model.encode(x)  # (N, D) each
    e = _noise(m, generator, noise)  # (N, D)
    z = m + (0.5 * logvar).exp() * e
    reconstruction = bernoulli_nll(model.decode(z), x)
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
    logits = model.decode(z.reshape(n * k, d))  # (N·k, P)
    reconstruction = bernoulli_nll(logits, x.repeat_interleave(k, 0)).reshape(n, k)  # (N, k) −log p(x|z_i)
    kl = _kl_sample(model, z, e, logvar[:, None])  # (N, k)
    log_w = -reconstruction - beta * kl  # (N, k)
    loss = math.log(k) - torch.logsumexp(log_w, 1)
    return {"loss": loss, "reconstruction": reconstruction.mean(1), "regularizer": kl.mean(1)}


def reconstruction_objective(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0, noise: torch.Tensor | None = None,
                             generator: torch.Generator | None = None) -> Terms:
    """The autoencoder's loss: the same Bernoulli reconstruction term, no regulariser."""
    reconstruction = bernoulli_nll(model.decode(model.encode(x)), x)
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
                       seed: int = 1234, batch_size: int = 2000, k: int = 1) -> dict[str, float]:
    """Mean over the images x (N, P) of each term, plus the common squared-error metric.

    The noise comes from a generator seeded with `seed`, so the result is a deterministic function
    of the weights: the value logged during training is the value `vaelab evaluate` prints.
    Returns nats per image (squared error in squared pixel units per image). `k`: iwae's samples.
    """
    function = objective_function(objective, k=k)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        terms = function(model, batch, beta=beta, generator=generator)
        terms["squared_error"] = squared_error(model.reconstruct(batch), batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.double().sum()
    model.train(was_training)
    return {k: float(v) / len(x) for k, v in sums.items()}
