"""Honest likelihoods for the Bernoulli decoders: exact log p(x) by quadrature over the latent space
(latent dimension 1 or 2), the importance-weighted bound IWAE_k (Burda et al. 2016, eq. 8), the
ELBO split into reconstruction and KL, active units (Burda et al. 2016, sec. 5.2) and the posterior gap.

Every value is in nats per image: per-image tensors of shape (N,), means in the JSON summaries.
Only the VAE defines p(x) = ∫ p(x|z) p(z) dz; PCA and the autoencoder have no likelihood ("n/a").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .models import VAE

LOG_2PI = math.log(2 * math.pi)
ACTIVE_THRESHOLD = 0.01  # Burda et al.: a unit is active if Var_x E_q[z_u|x] > 0.01
TOLERANCE = 0.01  # nats per image: the quadrature grid is refined until the answer moves less than this
# Quadrature start: grid half-width (in prior standard deviations) and step, per latent dimension.
# Steps are powers of two so that the grid with twice the step is a subset of the nodes.
START_GRID = {1: (6.0, 1 / 256), 2: (5.0, 1 / 16)}
MAX_POINTS = {1: 2 ** 20, 2: 2 ** 20}  # refinement gives up (converged: false) rather than exceed this


def has_likelihood(config: RunConfig) -> bool:
    """Only the VAE is a latent-variable model with a prior; PCA and the autoencoder are not."""
    return config.model == "vae"


def posterior(model: VAE, objective: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's own q(z|x) = N(m, exp(logvar)) for images x (N, P): returns m, logvar (N, D).

    `paper` draws c = exp(σ)·e + m (eq. 2), so exp(σ) is the standard deviation: logvar = 2σ.
    `elbo` reads the second encoder output as the log variance itself.
    """
    m, second = model.encode(x)  # (N, D) each
    if objective == "paper":
        return m, 2 * second
    if objective == "elbo":
        return m, second
    raise ValueError(f"objective {objective!r} defines no posterior q(z|x)")


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension: (..., D) -> (...,)."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


def log_bernoulli_matrix(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x_n | z_g) for every image and every code at once: (N, P), (G, P) -> (N, G) nats.

    log p(x|z) = Σ_p x_p·l_p − softplus(l_p), so the image-dependent part is one matrix product.
    """
    return x @ logits.T - F.softplus(logits).sum(-1)


# --- exact marginal likelihood by quadrature -------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A regular grid of nodes j·step, |j·step| <= limit, in `dim` dimensions (the origin is a node)."""

    dim: int  # latent dimension, 1 or 2
    limit: float  # half-width of the square [-limit, limit]^dim, in prior standard deviations
    step: float  # spacing of the nodes

    @property
    def per_axis(self) -> int:
        return 2 * round(self.limit / self.step) + 1

    @property
    def points(self) -> int:
        return self.per_axis ** self.dim

    def indices(self) -> torch.Tensor:
        """Integer node coordinates j (G, dim), so the nodes are j·step."""
        n = round(self.limit / self.step)
        axis = torch.arange(-n, n + 1)
        return torch.cartesian_prod(*[axis] * self.dim).reshape(-1, self.dim)

    def describe(self) -> dict:
        return {"limit": self.limit, "step": self.step, "points": self.points}


@torch.no_grad()
def quadrature(model: VAE, x: torch.Tensor, grid: Grid, *, node_batch: int = 2048,
               image_batch: int = 4096) -> dict[str, torch.Tensor]:
    """log p(x) ≈ log Σ_g p(x|z_g) p(z_g) · step^D for images x (N, P); float64 (N,) per image.

    Returns three estimates from one decoder pass: "fine" (the grid itself), "coarse" (every second
    node: twice the step) and "inner" (the same step, limit − 1). Their differences from "fine" say
    whether the grid resolves the integrand and covers its mass.
    The nodes are sorted into four disjoint classes (on the coarse grid or not, inside the inner
    square or not) so each image-node term is exponentiated once; per class, a float32 log-sum-exp
    over a block is exact to ~1e-5 nats, and blocks are combined in float64.
    """
    device = next(model.parameters()).device
    j = grid.indices().to(device)  # (G, D)
    n_inner = round((grid.limit - 1) / grid.step)
    on_coarse = (j % 2 == 0).all(-1)
    inside = (j.abs() <= n_inner).all(-1)
    classes = {(c, i): j[(on_coarse == c) & (inside == i)] for c in (True, False) for i in (True, False)}
    x = x.to(device=device, dtype=torch.float32)
    totals = {key: torch.full((len(x),), -math.inf, dtype=torch.float64, device=device) for key in classes}
    for key, idx in classes.items():
        for start in range(0, len(idx), node_batch):
            z = idx[start:start + node_batch].to(torch.float32) * grid.step  # (B, D)
            logits = model.decode(z)  # (B, P)
            prior = log_standard_normal(z.double())  # (B,)
            bias = (prior - F.softplus(logits).double().sum(-1)).float()  # (B,) the image-free part
            for lo in range(0, len(x), image_batch):
                terms = x[lo:lo + image_batch] @ logits.T + bias  # (n, B) log p(x|z) + log p(z)
                block = torch.logsumexp(terms, dim=1).double()
                totals[key][lo:lo + image_batch] = torch.logaddexp(totals[key][lo:lo + image_batch], block)
    lse = torch.logsumexp
    d = grid.dim
    fine = lse(torch.stack(list(totals.values())), 0) + d * math.log(grid.step)
    coarse = lse(torch.stack([totals[True, True], totals[True, False]]), 0) + d * math.log(2 * grid.step)
    inner = lse(torch.stack([totals[True, True], totals[False, True]]), 0) + d * math.log(grid.step)
    return {"fine": fine, "coarse": coarse, "inner": inner}


@dataclass
class ExactResult:
    nll: torch.Tensor  # (N,) float64, −log p(x) per image in nats
    grid: dict  # the grid used, the changes against the coarser grids, whether they met the tolerance


def exact_nll(model: VAE, x: torch.Tensor, *, tol: float = TOLERANCE, grid: Grid | None = None,
              max_points: int | None = None) -> ExactResult:
    """−log p(x) for images x (N, P) by quadrature, refined until it moves < `tol` nats per image.

    Starting from `grid` (default START_GRID), each pass compares the answer with the grid of twice
    the step and with the grid one standard deviation narrower; the step is halved or the limit
    widened by 2 until both mean absolute changes are below `tol`. If the next grid would exceed
    `max_points`, the last answer is returned with converged = False.
    """
    d = model.to_stats.out_features // 2  # latent dimension
    if d not in START_GRID:
        raise ValueError(f"exact NLL by quadrature needs latent dimension 1 or 2, this model has {d}; "
                         "use the IWAE bound (--nll iwae)")
    grid = grid or Grid(d, *START_GRID[d])
    max_points = max_points or MAX_POINTS[d]
    while True:
        est = quadrature(model, x, grid)
        d_step = (est["fine"] - est["coarse"]).abs()
        d_range = (est["fine"] - est["inner"]).abs()
        step_ok, range_ok = float(d_step.mean()) < tol, float(d_range.mean()) < tol
        refined = Grid(d, grid.limit + (0 if range_ok else 2), grid.step / (1 if step_ok else 2))
        done = step_ok and range_ok
        if done or refined.points > max_points:
            info = {**grid.describe(), "tolerance": tol, "converged": done,
                    "change_vs_double_step": float(d_step.mean()),
                    "change_vs_limit_minus_1": float(d_range.mean()),
                    "max_change_vs_double_step": float(d_step.max()),
                    "max_change_vs_limit_minus_1": float(d_range.max())}
            return ExactResult(-est["fine"], info)
        grid = refined


# --- importance sampling: IWAE_k and the ELBO -----------------------------------------------------

@torch.no_grad()
def importance_sampled(model: VAE, objective: str, x: torch.Tensor, *, k: int, seed: int,
                       sample_batch: int = 32768) -> dict[str, torch.Tensor]:
    """IWAE_k and the ELBO terms from k draws z_i ~ q(z|x) per image x (N, P); each (N,) float64 nats.

    iwae = −log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2016), an upper bound on −log p(x)
    that tightens as k grows; reconstruction = −(1/k) Σ_i log p(x|z_i); kl = KL(q ‖ N(0, I)) in closed
    form; neg_elbo = reconstruction + kl. The draws come from a generator seeded with `seed`, in a
    fixed order, so the result is a deterministic function of weights, data, k and seed.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {name: torch.empty(len(x), dtype=torch.float64, device=device)
           for name in ("iwae", "reconstruction", "kl", "neg_elbo")}
    per_chunk = max(1, sample_batch // k)  # images per chunk, all k samples of an image together
    chunk_k = min(k, sample_batch)  # samples per decoder call
    for lo in range(0, len(x), per_chunk):
        xb = x[lo:lo + per_chunk]  # (n, P)
        m, logvar = posterior(model, objective, xb)  # (n, D)
        std = (0.5 * logvar).exp()
        log_w = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=device)
        log_lik_sum = torch.zeros(len(xb), dtype=torch.float64, device=device)
        for s in range(0, k, chunk_k):
            e = torch.randn(min(chunk_k, k - s), *m.shape, generator=generator, device=device)  # (s, n, D)
            z = m + std * e
            logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:2], -1)  # (s, n, P)
            log_lik = torch.einsum("snp,np->sn", logits, xb) - F.softplus(logits).sum(-1)  # (s, n)
            log_q = log_standard_normal(e) - 0.5 * logvar.sum(-1)  # density of z = m + std·e
            terms = (log_lik + log_standard_normal(z) - log_q).double()
            log_w = torch.logaddexp(log_w, torch.logsumexp(terms, 0))
            log_lik_sum += log_lik.double().sum(0)
        out["iwae"][lo:lo + len(xb)] = math.log(k) - log_w
        out["reconstruction"][lo:lo + len(xb)] = -log_lik_sum / k
        kl = 0.5 * (logvar.exp() + m.square() - 1 - logvar).sum(-1)  # KL(N(m, e^logvar) ‖ N(0, I))
        out["kl"][lo:lo + len(xb)] = kl.double()
    out["neg_elbo"] = out["reconstruction"] + out["kl"]
    return out


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, *, threshold: float = ACTIVE_THRESHOLD,
                 batch_size: int = 4096) -> dict:
    """Burda et al.'s activity: Var over images x (N, P) of E_q[z_u|x] = m_u, per latent unit u.

    The mean m is the same under both objectives' q, so the count does not depend on the objective.
    """
    m = torch.cat([model.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])  # (N, D)
    variances = m.double().var(0)
    return {"count": int((variances > threshold).sum()), "threshold": threshold,
            "variances": [float(v) for v in variances]}


# --- the summary stored in evaluation.json ---------------------------------------------------------

def q_description(objective: str) -> str:
    return {"paper": "N(m, exp(σ)²): the paper's eq. (2) noise, exp(σ) as standard deviation",
            "elbo": "N(m, exp(logvar))"}[objective]


def measure(model: nn.Module, config: RunConfig, x: torch.Tensor, *, nll: str = "exact", k: int = 5000,
            iwae_images: int | None = None, seed: int | None = None) -> dict:
    """All likelihood numbers for one model on test images x (N, P): a JSON-able dict, nats per image.

    `nll="exact"`: quadrature NLL on all N images (latent <= 2 only), plus IWAE_k and the ELBO split on
    the first `iwae_images` of them (default all), and the posterior gap −ELBO − NLL on those.
    `nll="iwae"`: IWAE_k and the ELBO split only (any latent dimension). `seed` defaults to the run's
    eval seed. For PCA and the autoencoder the answer is {"applicable": False, ...}.
    """
    if nll not in ("exact", "iwae"):
        raise ValueError(f"unknown --nll {nll!r}; choose exact or iwae")
    if not has_likelihood(config):
        return {"applicable": False, "why": f"n/a: the {config.model} defines no p(x) (no prior, no noise)"}
    if nll == "exact" and config.latent_dim > 2:
        raise ValueError(f"--nll exact needs latent dimension 1 or 2 (this run has {config.latent_dim}); "
                         "use --nll iwae")
    seed = config.eval_seed if seed is None else seed
    n_iw = len(x) if iwae_images is None else min(iwae_images, len(x))
    pixels = ("binary (Bernoulli likelihood)" if config.binarize == "dynamic"
              else "grayscale: Bernoulli cross-entropy, not a normalised likelihood")
    result: dict = {"applicable": True, "pixels": pixels, "q": q_description(config.objective),
                    "test_images": len(x)}
    sampled = importance_sampled(model, config.objective, x[:n_iw], k=k, seed=seed)
    result["iwae"] = {"k": k, "images": n_iw, "nll": float(sampled["iwae"].mean()), "seed": seed}
    result["elbo"] = {"images": n_iw, "samples": k, **{name: float(sampled[name].mean())
                                                       for name in ("neg_elbo", "reconstruction", "kl")}}
    if nll == "exact":
        exact = exact_nll(model, x)
        result["exact"] = {"images": len(x), "nll": float(exact.nll.mean()), "grid": exact.grid}
        on_subset = exact.nll[:n_iw]
        result["posterior_gap"] = {"images": n_iw,
                                   "neg_elbo_minus_nll": float((sampled["neg_elbo"] - on_subset).mean()),
                                   "iwae_minus_nll": float((sampled["iwae"] - on_subset).mean()),
                                   "exact_nll_on_these_images": float(on_subset.mean())}
    result["active_units"] = active_units(model, x)
    return result


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines for a `measure` result (what `vaelab evaluate --nll` prints)."""
    if not result["applicable"]:
        return [f"likelihood: {result['why']}"]
    iw, el = result["iwae"], result["elbo"]
    lines = [f"q(z|x) = {result['q']}"]
    if "exact" in result:
        ex = result["exact"]
        g = ex["grid"]
        lines.append(f"exact NLL      {ex['nll']:10.3f} nats/image on {ex['images']} test images "
                     f"(grid [-{g['limit']:g}, {g['limit']:g}]^D, step {g['step']:g}, {g['points']} points, "
                     f"{'converged' if g['converged'] else 'NOT converged'} to {g['tolerance']:g} nats)")
    lines.append(f"IWAE_{iw['k']:<9} {iw['nll']:10.3f} nats/image on {iw['images']} test images")
    lines.append(f"-ELBO          {el['neg_elbo']:10.3f} = reconstruction {el['reconstruction']:.3f} "
                 f"+ KL {el['kl']:.3f} ({el['samples']} samples/image)")
    if "posterior_gap" in result:
        gap = result["posterior_gap"]
        lines.append(f"posterior gap  {gap['neg_elbo_minus_nll']:10.3f} nats/image = -ELBO - NLL "
                     f"= KL(q(z|x) || p(z|x)); IWAE - NLL {gap['iwae_minus_nll']:.3f}")
    au = result["active_units"]
    lines.append(f"active units   {au['count']} of {len(au['variances'])} "
                 f"(Var_x E[z|x] > {au['threshold']:g}: {', '.join(f'{v:.3g}' for v in au['variances'])})")
    return lines
