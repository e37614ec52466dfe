"""Training objectives as pure functions returning per-example terms in nats.

`paper` is eq. (2)-(3) of the paper exactly; `elbo` is Kingma & Welling (2014), App. B. Each
objective returns a dict of named tensors of shape (N,); the caller reduces (mean over images).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Terms = dict[str, torch.Tensor]


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


# What the encoder's second output σ means under each objective, as the log variance of q(z|x):
# `paper` draws c = exp(σ)·e + m (eq. 2), so exp(σ) is the standard deviation and log variance = 2σ;
# `elbo` reads σ as the log variance itself. The autoencoder and PCA define no q.
LOG_VARIANCE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "paper": lambda sigma: 2 * sigma,
    "elbo": lambda logvar: logvar,
}


def posterior(model: nn.Module, objective: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's own q(z|x) = N(m, exp(logvar)) for images x (N, P): returns m, logvar, (N, D) each."""
    if objective not in LOG_VARIANCE:
        raise ValueError(f"objective {objective!r} defines no posterior q(z|x); only {', '.join(LOG_VARIANCE)} do")
    m, second = model.encode(x)  # (N, D) each
    return m, LOG_VARIANCE[objective](second)


def squared_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_pixels (x̂ − x)², (N, P), (N, P) -> (N,): the metric shared by every model, PCA included."""
    return (x_hat - x).square().sum(-1)


def _noise(like: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None) -> torch.Tensor:
    """The standard normal draws e, shaped like m: given (drawn by the trainer for a whole global batch,
    see distributed.py), or drawn here from `generator`."""
    if noise is not None:
        return noise
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


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
    """Negative ELBO (β-weighted): z = m + exp(½·logvar)·e, loss = BCE + β·KL(q ‖ N(0, I))."""
    m, logvar = model.encode(x)  # (N, D) each
    z = m + (0.5 * logvar).exp() * _noise(m, generator, noise)
    reconstruction = bernoulli_nll(model.decode(z), x)
    regularizer = gaussian_kl(m, logvar)
    return {"loss": reconstruction + beta * regularizer, "reconstruction": reconstruction,
            "regularizer": regularizer}


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
    "reconstruction": reconstruction_objective,
    "squared-error": squared_error_objective,
}


@torch.no_grad()
def evaluate_objective(model: nn.Module, objective: str, x: torch.Tensor, *, beta: float = 1.0,
                       seed: int = 1234, batch_size: int = 2000) -> dict[str, float]:
    """Mean over the images x (N, P) of each term, plus the common squared-error metric.

    The noise comes from a generator seeded with `seed`, so the result is a deterministic function
    of the weights: the value logged during training is the value `vaelab evaluate` prints.
    Returns nats per image (squared error in squared pixel units per image).
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        terms = OBJECTIVES[objective](model, batch, beta=beta, generator=generator)
        terms["squared_error"] = squared_error(model.reconstruct(batch), batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.double().sum()
    model.train(was_training)
    return {k: float(v) / len(x) for k, v in sums.items()}
