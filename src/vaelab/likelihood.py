"""Honest likelihoods for the decoders, under any pixel likelihood of objectives.py: exact log p(x) by
quadrature over the latent space
(latent dimension 1 or 2), the importance-weighted bound IWAE_k (Burda et al. 2016), the
ELBO split into reconstruction and KL, active units (Burda et al. 2016, sec. 5.2) and the posterior gap.
p(z) is the model's own prior (models.py): N(0, I), or a learned mixture / VampPrior in closed form.

Every value is in nats per image: per-image tensors of shape (N,), means in the JSON summaries.
Only the VAE defines p(x) = ∫ p(x|z) p(z) dz; PCA and the autoencoder have no likelihood ("n/a").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, RunConfig, parse_choices
from .models import VAE
from .objectives import (
    LIKELIHOOD_NAMES,
    affine_log_prob,
    bits_per_dim,
    gaussian_kl,
    learned_prior,
    log_prior,
    log_standard_normal,
    pixel_log_prob,
    posterior,
)
from .progress import step, to_stderr

LOG_2PI = math.log(2 * math.pi)
ACTIVE_THRESHOLD = 0.01  # Burda et al.: a unit is active if Var_x E_q[z_u|x] > 0.01
TOLERANCE = 0.01  # nats per image: the quadrature grid is refined until the answer moves less than this
# Quadrature start per latent dimension: (half-width of the square in prior standard deviations,
# scan step, fine step). Steps are powers of two so that coarser grids are subsets of finer ones.
START_GRID = {1: (6.0, 1 / 64, 1 / 256), 2: (6.0, 1 / 16, 1 / 64)}
TILE = 0.25  # side of the tiles that are refined per image (wider on a wide square: tile_side)
# Tiles per axis at most: `scan` keeps the best node of every tile for every image, N × tiles^D floats
# (10 000 images at D = 2: 650 MB). A learned prior can be wide (a VampPrior component of scale 15 puts
# the square at ±114, 912 tiles of TILE per axis: 33 GB), so there the tiles grow instead.
MAX_TILES_PER_AXIS = 128
MARGIN = 20.0  # nats: tiles whose best scan node is this far below an image's best are not refined
# nats: an image whose estimate moves less than this when the step doubles is not refined further;
# half the tolerance, so that those images keep the mean change below it
RESOLVED = TOLERANCE / 2


def has_likelihood(config: RunConfig) -> bool:
    """Only the VAE is a latent-variable model with a prior; PCA and the autoencoder are not."""
    return config.model == "vae"


def check_applicable(config: RunConfig) -> None:
    """ConfigError when asking `config`'s model for a likelihood (`vaelab evaluate --nll`) would have no
    effect: PCA and the autoencoder define no p(x). (`measure` itself answers "n/a" for them, which is
    what the report's table shows.)"""
    if not has_likelihood(config):
        raise ConfigError(f"--nll has no effect on a{'n' if config.model[0] in 'aeiou' else ''} {config.model} run: "
                          "it defines no p(x) (no prior, no noise; only a vae does); drop it")


# The quadrature's square covers every component of the prior to this many of its standard deviations
# (N(0, I): 6, START_GRID's start)
PRIOR_SCALES = 6.0
# ... up to this half-width per latent dimension: a learned prior can hold a stray component far wider
# than the rest (a VampPrior pseudo-input encoded with a huge variance: measured at latent 1, ±156 029
# while every image's posterior lay within ±200), whose thin density no image's posterior points to; a
# square that size costs hours and tens of GB. Beyond the cap the square follows the posteriors, and the
# prior's mass left outside is computed and reported (grid "prior_mass_outside"). The caps lie above
# every square the recipes' runs used (z1-best ±354, z2-best ±104 to ±115), so those squares stand; at
# the stretched scan steps they are 16 385 nodes (1-D) and about 10^6 (2-D).
PRIOR_LIMIT_CAP = {1: 512.0, 2: 128.0}
# The square also holds every scored image's posterior mean ± this many of its standard deviations (where
# its integrand peaks); the check on the square's outer band widens it if mass remains at the edge.
POSTERIOR_SCALES = 3.0
# A posterior narrower than 1/NARROW of a grid step: its peak's nearest node can lie more than 8·D nats
# (D·step²/(8σ²)) below it, where neither the tiles' margin nor the step-doubling check is sure to see it.
NARROW = 8
# Finest quadrature step the refinement may reach: a trained 1-D code can have posteriors of sd 3e-4
# (measured), and the trapezoid rule needs a step within about twice a peak's sd. In 2-D a tile of side
# 0.25 holds (0.25/step)² nodes: 2^-12 is 10^6 of them.
FINEST_STEP = {1: 2.0 ** -16, 2: 2.0 ** -12}


def prior_extent(model: VAE, scales: float = PRIOR_SCALES) -> float:
    """Half-width of the smallest square centred at 0 holding every prior component ± `scales` standard
    deviations: max over components k and axes d of |μ_kd| + scales·σ_kd (N(0, I): exactly `scales`)."""
    with torch.no_grad():
        means, logvars = model.prior.components(model)  # (K, D) each
        return float((means.abs() + scales * (0.5 * logvars).exp()).max())


def prior_mass_outside(model: VAE, limit: float) -> float:
    """The prior's probability outside the square [-limit, limit]^D, in closed form (equal-weight diagonal
    Gaussian components)."""
    with torch.no_grad():
        means, logvars = (t.double() for t in model.prior.components(model))  # (K, D) each
        sd = (0.5 * logvars).exp()
        inside = (torch.special.ndtr((limit - means) / sd) - torch.special.ndtr((-limit - means) / sd)).prod(-1)
        return float((1 - inside.mean()).clamp_min(0))


@torch.no_grad()
def posterior_stats(model: VAE, objective: str, x: torch.Tensor, *,
                    batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x)'s means and standard deviations for images x (N, P), (N, D) each: where, and how narrowly, each
    image's integrand p(x|z) p(z) peaks (the encoder was trained to find it)."""
    x = x.to(device=next(model.parameters()).device, dtype=torch.float32)
    parts = [posterior(model, objective, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    m = torch.cat([p[0] for p in parts]).float()
    return m, torch.cat([(0.5 * p[1]).exp() for p in parts]).float()


# --- exact marginal likelihood by quadrature -------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A regular grid of nodes j·step, |j·step| <= limit, in `dim` dimensions (the origin is a node)."""

    dim: int  # latent dimension, 1 or 2
    limit: float  # half-width of the square [-limit, limit]^dim, in prior standard deviations
    step: float  # spacing of the nodes

    @property
    def points(self) -> int:
        return (2 * round(self.limit / self.step) + 1) ** self.dim

    def indices(self) -> torch.Tensor:
        """Integer node coordinates j (G, dim), so the nodes are j·step."""
        n = round(self.limit / self.step)
        axis = torch.arange(-n, n + 1)
        return torch.cartesian_prod(*[axis] * self.dim).reshape(-1, self.dim)


@dataclass
class NodeTerms:
    """A block of B decoded codes, ready to score any images x (n, P) against all of them: `log_joint(x)`
    is log p(x|z_b) + log p(z_b) as (n, B).

    Where log p(x|z) is affine in x (both Bernoulli likelihoods: objectives.affine_log_prob) that is one
    matrix product x @ weightᵀ + bias; otherwise (the Gaussian) log p(x|z) is computed pair by pair
    with objectives.pixel_log_prob, in chunks."""

    logits: torch.Tensor  # (B, P) decoder outputs
    bias: torch.Tensor  # (B,) float32: log p(z) (+ the affine offset summed over pixels)
    weight: torch.Tensor | None  # (B, P) affine weights, or None
    likelihood: str
    raw_scale: torch.Tensor | None  # the Gaussian's per-pixel scale parameter (P,)

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, s: slice) -> NodeTerms:
        return NodeTerms(self.logits[s], self.bias[s], None if self.weight is None else self.weight[s],
                         self.likelihood, self.raw_scale)

    def log_joint(self, x: torch.Tensor, *, max_elements: int = 1 << 24) -> torch.Tensor:
        """log p(x, z_b) for images x (n, P) and every code of the block: (n, B) float32."""
        if self.weight is not None:
            return x @ self.weight.T + self.bias
        out = torch.empty(len(x), len(self), device=x.device)
        step = max(1, max_elements // max(1, len(x) * x.shape[1]))  # codes per chunk: n·step·P values at most
        for lo in range(0, len(self), step):
            out[:, lo:lo + step] = pixel_log_prob(self.likelihood, self.logits[None, lo:lo + step], x[:, None],
                                                  raw_scale=self.raw_scale) + self.bias[lo:lo + step]
        return out


def joint_terms(model: VAE, z: torch.Tensor) -> NodeTerms:
    """Decode codes z (B, D) once, for scoring any images against them (NodeTerms).

    For the Bernoulli likelihoods log p(x|z) = Σ_p x_p·l_p + offset_p(l), so log p(x, z) = x @ logitsᵀ +
    bias for any images x (N, P): one matrix product gives all (N, B) pairs. The bias is summed in
    float64 (784 terms of up to ~10 nats) and then rounded to float32 (~1e-5 nats).
    """
    logits = model.decode(z)
    likelihood = getattr(model, "likelihood", "bernoulli")
    affine = affine_log_prob(likelihood, logits)
    bias = log_prior(model, z.double())  # the model's p(z), in float64
    if affine is not None:
        bias = bias + affine[1].double().sum(-1)
    return NodeTerms(logits, bias.float(), None if affine is None else affine[0], likelihood,
                     getattr(model.decoder, "raw_scale", None))


@torch.no_grad()
def quadrature(model: VAE, x: torch.Tensor, grid: Grid, *, node_batch: int = 4096,
               image_batch: int = 4096) -> torch.Tensor:
    """log p(x) ≈ log Σ_g p(x|z_g) p(z_g) · step^D over every node of `grid`; float64 (N,) nats.

    The plain rule, every image against every node: simple and the reference for `scan` + `refine`
    in the tests, but its cost grows as step^−D for all images alike. Per block of nodes a float32
    log-sum-exp (exact to ~1e-5 nats at these magnitudes); blocks are combined in float64.
    """
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    j = grid.indices().to(device)
    total = torch.full((len(x),), -math.inf, dtype=torch.float64, device=device)
    for start in range(0, len(j), node_batch):
        terms = joint_terms(model, j[start:start + node_batch].float() * grid.step)
        for lo in range(0, len(x), image_batch):
            block = torch.logsumexp(terms.log_joint(x[lo:lo + image_batch]), 1).double()
            total[lo:lo + image_batch] = torch.logaddexp(total[lo:lo + image_batch], block)
    return total + grid.dim * math.log(grid.step)


def tile_side(limit: float, step: float) -> float:
    """The tiles' side on the square [-limit, limit]^D scanned at `step`: TILE, or wider where the square
    would hold more than MAX_TILES_PER_AXIS of them; always a whole number of scan steps that divides
    the square's side, so that the tiles cover every scan node exactly."""
    steps = round(2 * limit / step)  # scan steps across the square
    per_tile = max(round(TILE / step), 1, math.ceil(steps / MAX_TILES_PER_AXIS))
    while steps % per_tile:
        per_tile += 1
    return per_tile * step


@dataclass
class Scan:
    """The plain rule over the whole square for every image, with what `refine` needs to go finer."""

    dim: int  # latent dimension
    limit: float  # the square is [-limit, limit]^dim
    step: float  # scan step
    log_px: torch.Tensor  # (N,) float64: log Σ p(x, z_g) step^D over all scan nodes
    log_px_inner: torch.Tensor  # (N,) the same over the square narrower by 1 (mass outside = the difference)
    log_px_double: torch.Tensor  # (N,) the same on the grid of twice the step
    best_in_tile: torch.Tensor  # (N, T) float32: the largest log p(x, z) at a scan node of each tile
    tile: float = TILE  # side of the tiles `refine` integrates again

    @property
    def tiles_per_axis(self) -> int:
        return round(2 * self.limit / self.tile)


@torch.no_grad()
def scan(model: VAE, x: torch.Tensor, *, dim: int, limit: float, step: float, tile: float = TILE,
         node_batch: int = 4096, image_batch: int = 2048) -> Scan:
    """Every image x (N, P) against every node of the grid of `step` over [-limit, limit]^dim.

    Nodes are grouped (inside the square narrower by 1?, on the grid of twice the step?) so that each
    block lies in one group: the sums over the whole grid, the narrower square and the double step
    come out of one pass. Tiles are closed squares of side `tile`: a node on an edge belongs to the
    tiles on both sides, so a mode inside a tile is within half a scan-cell diagonal of one of that
    tile's own nodes.
    """
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    n_img, tile = len(x), max(tile, step)  # a tile holds at least one scan cell
    n, per_tile = round(limit / step), round(tile / step)  # indices run over [-n, n]; scan steps per tile
    n_tiles = 2 * n // per_tile
    weights = torch.tensor([n_tiles ** (dim - 1 - a) for a in range(dim)], device=device)
    shifts = torch.cartesian_prod(*[torch.tensor([0, 1], device=device)] * dim).reshape(-1, dim)  # (2^D, D)

    def tiles_of(j: torch.Tensor) -> torch.Tensor:  # scan indices (B, D) -> (2^D, B) flat tile numbers
        on_edge = ((j + n) % per_tile == 0).long()
        coords = ((j + n) // per_tile - shifts[:, None, :] * on_edge).clamp(0, n_tiles - 1)  # (2^D, B, D)
        return (coords * weights).sum(-1)

    j_all = Grid(dim, limit, step).indices().to(device)  # (G, D)
    inside = (j_all.abs() <= round((limit - 1) / step)).all(-1)
    even = (j_all % 2 == 0).all(-1)
    group = 2 * (~inside).long() + (~even).long()  # 0: inside, even; 1: inside, odd; 2, 3: outside
    order = torch.argsort(group, stable=True)
    j_all, group = j_all[order], group[order]
    sums = torch.full((4, n_img), -math.inf, dtype=torch.float64, device=device)
    best_in_tile = torch.full((n_img, n_tiles ** dim), -math.inf, device=device)
    ends = torch.cumsum(torch.bincount(group, minlength=4), 0).tolist()
    cuts = sorted({*range(0, len(j_all), node_batch), *ends, 0})
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        g = int(group[start])
        nodes = joint_terms(model, j_all[start:stop].float() * step)
        tiles = tiles_of(j_all[start:stop])  # rows after the first differ from it on edge nodes only
        edges = [(t[t != tiles[0]], t != tiles[0]) for t in tiles[1:]]
        for lo in range(0, n_img, image_batch):
            terms = nodes.log_joint(x[lo:lo + image_batch])  # (n, B) log p(x, z)
            block = torch.logsumexp(terms, 1).double()
            sums[g, lo:lo + image_batch] = torch.logaddexp(sums[g, lo:lo + image_batch], block)
            best = best_in_tile[lo:lo + image_batch]
            best.scatter_reduce_(1, tiles[0].expand_as(terms), terms, "amax")
            for t, on_edge in edges:
                best.scatter_reduce_(1, t.expand(len(terms), -1), terms[:, on_edge], "amax")
    log_h = dim * math.log(step)
    return Scan(dim, limit, step, log_px=torch.logsumexp(sums, 0) + log_h,
                log_px_inner=torch.logaddexp(sums[0], sums[1]) + log_h,
                log_px_double=torch.logaddexp(sums[0], sums[2]) + dim * math.log(2 * step),
                best_in_tile=best_in_tile, tile=tile)


@torch.no_grad()
def refine(model: VAE, x: torch.Tensor, s: Scan, *, fine_step: float, todo: torch.Tensor | None = None,
           also: torch.Tensor | None = None, margin: float = MARGIN, node_batch: int = 4096,
           image_batch: int = 2048) -> dict[str, torch.Tensor | float]:
    """log p(x) for images x (N, P) on the grid of `fine_step` where each image's integrand lives.

    Each image in `todo` (N,) bool (default: those whose scan moves by >= RESOLVED when the scan
    step doubles) has its tiles within `margin` nats of its best scan node integrated again on the
    fine grid (which contains the scan nodes), and the tiles marked in `also` (N, T) bool (exact_nll:
    those around its posterior, a peak too narrow for the scan to see); everywhere else its scan sum
    stands. A Gaussian-shaped mode of standard deviation σ is seen by one of its own tile's scan nodes at
    most (step·√D/2)²/(2σ²) nats below its peak, so with the defaults no mode wider than σ ≈ 0.007 can be
    missed by the margin alone. Codes are decoded `node_batch` at a time, however wide a tile is.

    Returns float64 (N,) "fine" (the answer) and "coarse" (the same with twice the fine step), and
    "refined_nodes" (mean fine nodes per image) and "refined_images".
    """
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    d, n_img, n_tiles = s.dim, len(x), s.tiles_per_axis
    ratio = round(s.step / fine_step)  # fine steps per scan step, a power of two >= 2
    n_f, per_tile = round(s.limit / fine_step), round(s.tile / fine_step)  # fine indices over [-n_f, n_f]
    if todo is None:
        todo = (s.log_px - s.log_px_double).abs() >= RESOLVED
    chosen = s.best_in_tile >= s.best_in_tile.max(1, keepdim=True).values - margin  # (N, T)
    if also is not None:
        chosen |= also
    chosen[~todo] = False

    def tile_nodes(t: int) -> tuple[torch.Tensor, list[int]]:
        """Fine indices of tile t (B, D): scan nodes first, then the other nodes of the double step,
        then the rest; with the bounds [0, b0, b1, B] of those three runs."""
        corner = [(t // n_tiles ** (d - 1 - a)) % n_tiles for a in range(d)]
        axes = [torch.arange(c * per_tile - n_f, (c + 1) * per_tile - n_f + (c == n_tiles - 1), device=device)
                for c in corner]
        j = torch.cartesian_prod(*axes).reshape(-1, d)
        level = torch.where((j % ratio == 0).all(-1), 0, torch.where((j % 2 == 0).all(-1), 1, 2))
        return j[torch.argsort(level, stable=True)], [0, *(int((level <= k).sum()) for k in (0, 1)), len(j)]

    # per image, the sum over its refined tiles' nodes of each run: scan nodes, the double step's others, the rest
    own = torch.full((3, n_img), -math.inf, dtype=torch.float64, device=device)
    union = torch.nonzero(chosen.any(0)).flatten().tolist()
    per_decode = max(1, node_batch // (per_tile + 1) ** d)  # tiles decoded together (one large matmul)
    for first in range(0, len(union), per_decode):
        tiles, parts, runs, start = union[first:first + per_decode], [], [], 0
        for t in tiles:  # runs: (tile, level, first node, end) in the concatenation of the tiles' nodes
            j, bounds = tile_nodes(t)
            runs += [(t, level, start + lo, start + hi)
                     for level, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
            parts.append(j)
            start += len(j)
        j_all = torch.cat(parts)
        images = {t: torch.nonzero(chosen[:, t]).flatten() for t in tiles}
        for lo in range(0, len(j_all), node_batch):
            hi = min(lo + node_batch, len(j_all))
            nodes = joint_terms(model, j_all[lo:hi].float() * fine_step)
            for t, level, r0, r1 in runs:
                a, b = max(r0, lo), min(r1, hi)
                if a >= b:
                    continue
                for i0 in range(0, len(images[t]), image_batch):
                    idx = images[t][i0:i0 + image_batch]
                    block = torch.logsumexp(nodes[a - lo:b - lo].log_joint(x[idx]), 1).double()
                    own[level, idx] = torch.logaddexp(own[level, idx], block)
    on_scan = own[0]
    on_double = torch.logaddexp(on_scan, own[1])
    on_fine = torch.logaddexp(on_double, own[2])

    # the scan sum outside the refined tiles = all − refined part (float64; clamped at 0 for rounding)
    scan_units = s.log_px - d * math.log(s.step)  # back to a plain sum of p(x, z) over scan nodes
    outside = torch.log((1 - torch.exp(on_scan - scan_units)).clamp_min(0)) + s.log_px
    fine = torch.logaddexp(outside, on_fine + d * math.log(fine_step))
    coarse = torch.logaddexp(outside, on_double + d * math.log(2 * fine_step))
    return {"fine": fine, "coarse": coarse, "refined_images": int(todo.sum()),
            "refined_nodes": float(chosen.sum(1).double().mean()) * per_tile ** d}


def tiles_around(s: Scan, m: torch.Tensor, sd: torch.Tensor, scales: float = POSTERIOR_SCALES) -> torch.Tensor:
    """(N, T) bool: the tiles of scan `s` that the box m ± scales·sd of each image (N, D) each touches."""
    n_tiles = s.tiles_per_axis
    lo = ((m - scales * sd + s.limit) / s.tile).floor().clamp(0, n_tiles - 1).long()  # (N, D) tile coordinates
    hi = ((m + scales * sd + s.limit) / s.tile).floor().clamp(0, n_tiles - 1).long()
    axis = torch.arange(n_tiles, device=m.device)
    per_axis = [(axis >= lo[:, a, None]) & (axis <= hi[:, a, None]) for a in range(s.dim)]  # (N, n_tiles) each
    if s.dim == 1:
        return per_axis[0]
    return (per_axis[0][:, :, None] & per_axis[1][:, None, :]).reshape(len(m), -1)  # row-major, as `scan`


@dataclass
class ExactResult:
    nll: torch.Tensor  # (N,) float64, −log p(x) per image in nats
    grid: dict  # the grids used, the changes against the coarser ones, whether they met the tolerance


def exact_nll(model: VAE, x: torch.Tensor, *, objective: str = "elbo", tol: float = TOLERANCE,
              limit: float | None = None, scan_step: float | None = None, fine_step: float | None = None,
              max_limit: float = 12.0, min_fine_step: float | None = None) -> ExactResult:
    """−log p(x) for images x (N, P) by quadrature, refined until it moves < `tol` nats per image.

    Changes are means over images of |difference|. First the square: the scan is widened by 2 until
    the mass outside the square narrower by 1 is below `tol`; its default start covers the prior's
    components (`prior_extent`, up to PRIOR_LIMIT_CAP) and every image's posterior (mean ± POSTERIOR_SCALES
    sd, read as `objective`'s q), rounded up to a whole number (N(0, I): START_GRID's 6), and `max_limit`
    is at least that start + 6; a prior 2x or 4x wider than N(0, I) doubles or quadruples the default
    steps. Then the step: if the scan moves less
    than `tol` when its step doubles, it is the answer; otherwise `refine` at `fine_step`, halved
    until the answer moves less than `tol` against twice its step. An image whose posterior is narrower
    than 1/NARROW of the scan step (a peak the scan may miss altogether) is always refined, its
    posterior's tiles included, and `min_fine_step` (default 2^-10) goes down to its sd (FINEST_STEP at
    most). The posteriors' reach is capped like the prior's. Past `max_limit` or `min_fine_step` the last
    answer is returned with converged = False.
    """
    d = model.to_stats.out_features // 2  # latent dimension
    if d not in START_GRID:
        raise ValueError(f"exact NLL by quadrature needs latent dimension 1 or 2, this model has {d}; "
                         "use the IWAE bound (--nll iwae)")
    if len(x) == 0:
        raise ValueError("exact NLL of no images: x is empty")
    start = START_GRID[d]
    extent = prior_extent(model)
    covered = min(extent, PRIOR_LIMIT_CAP[d])
    m, sd = posterior_stats(model, objective, x)
    if not bool(torch.isfinite(m).all() and torch.isfinite(sd).all()):
        raise ValueError("the encoder gives non-finite posterior means or scales for some images: the model "
                         "is broken (a diverged run?); its likelihood cannot be integrated")
    # (capped like the prior: one outlier posterior must not bring back a square of ±10^5)
    reach = min(float((m.abs() + POSTERIOR_SCALES * sd).max()), PRIOR_LIMIT_CAP[d])
    # A prior wider than N(0, I) (a learned one) stretches the latent space: the steps grow with it, by a
    # power of two (nested grids) up to 4 (a scan step <= TILE); the step-doubling checks below still decide
    stretch = 2.0 ** min(2, max(0, math.floor(math.log2(covered / PRIOR_SCALES))))
    limit = limit or max(start[0], float(math.ceil(covered)), float(math.ceil(reach)))
    max_limit = max(max_limit, limit + 6)
    scan_step, fine_step = scan_step or start[1] * stretch, fine_step or start[2] * stretch
    while True:
        s = scan(model, x, dim=d, limit=limit, step=scan_step, tile=tile_side(limit, scan_step))
        d_range = (s.log_px - s.log_px_inner).abs()
        range_ok = float(d_range.mean()) < tol
        if range_ok or limit + 2 > max_limit:
            break
        limit += 2
    answer, coarse, used = s.log_px, s.log_px_double, None  # the scan, unless it is not resolved
    refined = {"refined_nodes": 0.0, "refined_images": 0}
    # images whose answer still moves when the step halves, and those whose posterior is narrower than
    # 1/NARROW step: a peak the grid may miss altogether (both it and the double step then see only tails)
    sd_min = sd.min(1).values
    narrow = sd_min < scan_step / NARROW
    todo = ((answer - coarse).abs() >= RESOLVED) | narrow
    also = None
    if bool(narrow.any()):  # (rows for the narrow images only: N × tiles bools otherwise)
        also = torch.zeros_like(s.best_in_tile, dtype=torch.bool)
        also[narrow] = tiles_around(s, m[narrow], sd[narrow])
    if min_fine_step is None:  # 2^-10, or down to the narrowest posterior's sd (FINEST_STEP at most)
        narrowest = float(sd_min.min())
        min_fine_step = max(FINEST_STEP[d], min(2.0 ** -10, 2.0 ** math.floor(math.log2(max(narrowest, 1e-30)))))
    unseen = narrow  # narrow images at the finest step so far (the loop goes on until there are none)
    while bool(todo.any()) and fine_step >= min_fine_step and (
            float((answer - coarse).abs().mean()) >= tol or bool(unseen.any())):
        refined = refine(model, x, s, fine_step=fine_step, todo=todo, also=also)
        answer = torch.where(todo, refined["fine"], answer)
        coarse = torch.where(todo, refined["coarse"], coarse)
        unseen = sd_min < fine_step / NARROW
        todo &= ((answer - coarse).abs() >= RESOLVED) | unseen
        if float((answer - coarse).abs().mean()) < tol:  # converged but for narrow ones: refine only those
            todo &= unseen
        used, fine_step = fine_step, fine_step / 2
    d_step = (answer - coarse).abs()
    info = {"prior_extent": extent, "limit": limit, "scan_step": scan_step, "fine_step": used, "tile": s.tile,
            "margin": MARGIN,
            "scan_points": Grid(d, limit, scan_step).points,
            "refined_points_per_image": refined["refined_nodes"], "refined_images": refined["refined_images"],
            "narrow_posteriors": int(narrow.sum()),
            "tolerance": tol,
            "converged": range_ok and float(d_step.mean()) < tol and not bool(unseen.any()),
            "change_vs_double_step": float(d_step.mean()), "max_change_vs_double_step": float(d_step.max()),
            "mass_outside_limit_minus_1": float(d_range.mean()),
            "prior_mass_outside": prior_mass_outside(model, limit),
            "scan_minus_answer": float((s.log_px - answer).abs().mean())}
    return ExactResult(-answer, info)


# --- importance sampling: IWAE_k and the ELBO -----------------------------------------------------

@torch.no_grad()
def importance_sampled(model: VAE, objective: str, x: torch.Tensor, *, k: int, seed: int,
                       sample_batch: int = 32768,
                       advance: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """IWAE_k and the ELBO terms from k draws z_i ~ q(z|x) per image x (N, P); each (N,) float64 nats.

    iwae = −log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2016), an upper bound on −log p(x)
    that tightens as k grows; reconstruction = −(1/k) Σ_i log p(x|z_i); kl = KL(q ‖ N(0, I)) in closed
    form, or for a learned prior (no closed form) its estimate (1/k) Σ_i log q(z_i|x) − log p(z_i) from
    the same draws; neg_elbo = reconstruction + kl. p(z) is the model's prior. The draws come from a
    generator seeded with `seed`, in a fixed order, so the result is a deterministic function of weights,
    data, k and seed.
    `advance(n)` is called after each chunk of n images (progress).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    likelihood = getattr(model, "likelihood", "bernoulli")
    out = {name: torch.empty(len(x), dtype=torch.float64, device=device)
           for name in ("iwae", "reconstruction", "kl", "neg_elbo")}
    per_chunk = max(1, sample_batch // k)  # images per chunk, all k samples of an image together
    chunk_k = min(k, sample_batch)  # samples per decoder call
    learned = learned_prior(model)
    for lo in range(0, len(x), per_chunk):
        xb = x[lo:lo + per_chunk]  # (n, P)
        m, logvar = posterior(model, objective, xb)  # (n, D)
        std = (0.5 * logvar).exp()
        log_w = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=device)
        log_lik_sum = torch.zeros(len(xb), dtype=torch.float64, device=device)
        kl_sum = torch.zeros(len(xb), dtype=torch.float64, device=device)
        for s in range(0, k, chunk_k):
            e = torch.randn(min(chunk_k, k - s), *m.shape, generator=generator, device=device)  # (s, n, D)
            z = m + std * e
            logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:2], -1)  # (s, n, P)
            affine = affine_log_prob(likelihood, logits)
            if affine is not None:  # Bernoulli: x·l − softplus(l), as since vaelab 0.1
                log_lik = torch.einsum("snp,np->sn", affine[0], xb) + affine[1].sum(-1)  # (s, n)
            else:
                log_lik = pixel_log_prob(likelihood, logits, xb, raw_scale=model.decoder.raw_scale)  # (s, n)
            log_q = log_standard_normal(e) - 0.5 * logvar.sum(-1)  # density of z = m + std·e
            log_p = log_prior(model, z)  # (s, n)
            terms = (log_lik + log_p - log_q).double()
            log_w = torch.logaddexp(log_w, torch.logsumexp(terms, 0))
            log_lik_sum += log_lik.double().sum(0)
            if learned:
                kl_sum += (log_q - log_p).double().sum(0)
        out["iwae"][lo:lo + len(xb)] = math.log(k) - log_w
        out["reconstruction"][lo:lo + len(xb)] = -log_lik_sum / k
        out["kl"][lo:lo + len(xb)] = kl_sum / k if learned else gaussian_kl(m, logvar).double()
        if advance is not None:
            advance(len(xb))
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
            "elbo": "N(m, exp(logvar))", "iwae": "N(m, exp(logvar))"}[objective]


ESTIMATORS = ("exact", "iwae")
# The ELBO split when IWAE is not asked for: this many draws per image on every image (cheap: seconds).
ELBO_SAMPLES = 10


def parse_estimators(nll: str | Sequence[str]) -> tuple[str, ...]:
    """'exact', 'iwae', 'exact,iwae' (or a sequence of those) -> a tuple in ESTIMATORS order; strict
    (config.parse_choices: no empty or repeated items)."""
    text = nll if isinstance(nll, str) else ",".join(map(str, nll))
    return parse_choices(text, "--nll", ESTIMATORS)


def measure(model: nn.Module, config: RunConfig, x: torch.Tensor, *, nll: str | Sequence[str] = "exact",
            k: int = 1000, iwae_images: int | None = None, seed: int | None = None,
            elbo_samples: int = ELBO_SAMPLES, log: Callable[[str], None] = to_stderr,
            bar: bool | None = None) -> dict:
    """The likelihood numbers asked for, for one model on test images x (N, P): a JSON-able dict, nats per image.

    `nll` names the estimators: "exact" (quadrature on all N images; latent <= 2), "iwae" (IWAE_k on the
    first `iwae_images`, default all; any latent dimension), or both. The ELBO split (reconstruction +
    KL) comes from IWAE's own k draws on its images when IWAE runs, else from `elbo_samples` draws on all
    N images; with the exact NLL, the posterior gap −ELBO − NLL (and IWAE − NLL) on those images.
    Active units are always given. `seed` defaults to the run's eval seed. Each step logs its wall
    time (`log`); a long one says how long it will take (`progress.step`). For PCA and the
    autoencoder the answer is {"applicable": False, ...}.
    """
    estimators = parse_estimators(nll)
    if not has_likelihood(config):
        return {"applicable": False, "why": f"n/a: the {config.model} defines no p(x) (no prior, no noise)"}
    if "exact" in estimators and config.latent_dim > 2:
        raise ValueError(f"--nll exact needs latent dimension 1 or 2 (this run has {config.latent_dim}); "
                         "use --nll iwae")
    seed = config.eval_seed if seed is None else seed
    if config.likelihood != "bernoulli":
        pixels = f"intensities in [0, 1]: {LIKELIHOOD_NAMES[config.likelihood]}, a density (nats may be negative)"
    elif config.binarize == "dynamic":
        pixels = "binary (Bernoulli likelihood)"
    else:
        pixels = ("grayscale: Bernoulli cross-entropy, not a normalised likelihood "
                  "(use --likelihood continuous-bernoulli)")
    dims = config.n_pixels
    result: dict = {"applicable": True, "pixels": pixels, "pixel_likelihood": config.likelihood,
                    "dimensions": dims, "q": q_description(config.objective),
                    "prior": config.prior, "test_images": len(x)}
    if "iwae" in estimators:
        n_el, draws = len(x) if iwae_images is None else min(iwae_images, len(x)), k
        name = f"IWAE_{k}"
    else:
        n_el, draws, name = len(x), elbo_samples, f"ELBO ({elbo_samples} draws per image)"
    with step(name, n_el, log=log, bar=bar) as advance:
        sampled = importance_sampled(model, config.objective, x[:n_el], k=draws, seed=seed, advance=advance)
    if "iwae" in estimators:
        nats = float(sampled["iwae"].mean())
        result["iwae"] = {"k": k, "images": n_el, "nll": nats, "bits_per_dim": bits_per_dim(nats, dims), "seed": seed}
    result["elbo"] = {"images": n_el, "samples": draws, "seed": seed,
                      **{key: float(sampled[key].mean()) for key in ("neg_elbo", "reconstruction", "kl")}}
    result["elbo"]["bits_per_dim"] = bits_per_dim(result["elbo"]["neg_elbo"], dims)
    if "exact" in estimators:
        with step("exact NLL (quadrature)", len(x), log=log, bar=False) as advance:
            exact = exact_nll(model, x, objective=config.objective)
            advance(len(x))
        nats = float(exact.nll.mean())
        result["exact"] = {"images": len(x), "nll": nats, "bits_per_dim": bits_per_dim(nats, dims), "grid": exact.grid}
        on_subset = exact.nll[:n_el]
        gap = {"images": n_el, "neg_elbo_minus_nll": float((sampled["neg_elbo"] - on_subset).mean())}
        if "iwae" in estimators:
            gap["iwae_minus_nll"] = float((sampled["iwae"] - on_subset).mean())
        gap["exact_nll_on_these_images"] = float(on_subset.mean())
        result["posterior_gap"] = gap
    result["active_units"] = active_units(model, x)
    return result


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines for a `measure` result (what `vaelab evaluate --nll` prints)."""
    if not result["applicable"]:
        return [f"likelihood: {result['why']}"]
    el = result["elbo"]
    prior = result.get("prior", "standard")
    p_z = "N(0, I)" if prior == "standard" else f"{prior} (learned)"
    lines = [f"pixels: {result['pixels']}", f"q(z|x) = {result['q']}; p(z) = {p_z}"]

    def per_dim(r: dict) -> str:
        return f" = {r['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in r else ""

    if "exact" in result:
        ex = result["exact"]
        g = ex["grid"]
        fine = (f"fine step {g['fine_step']:g} where the integrand lives" if g["fine_step"]
                else "no finer step needed")
        state = "converged" if g["converged"] else "NOT converged"
        if g.get("prior_mass_outside", 0) > 1e-6:  # a learned prior's stray component, beyond PRIOR_LIMIT_CAP
            state += f"; the prior's mass outside the square: {g['prior_mass_outside']:.3g}"
        lines.append(f"exact NLL      {ex['nll']:10.3f} nats/image{per_dim(ex)} on {ex['images']} test images "
                     f"(quadrature on "
                     f"[-{g['limit']:g}, {g['limit']:g}]^D: scan step {g['scan_step']:g}, {fine}; {state} to "
                     f"{g['tolerance']:g} nats/image)")
    if "iwae" in result:
        iw = result["iwae"]
        lines.append(f"IWAE_{iw['k']:<9} {iw['nll']:10.3f} nats/image{per_dim(iw)} on {iw['images']} test images")
    lines.append(f"-ELBO          {el['neg_elbo']:10.3f}{per_dim(el)} = reconstruction {el['reconstruction']:.3f} "
                 f"+ KL {el['kl']:.3f} ({el['samples']} samples/image on {el['images']} test images)")
    if "posterior_gap" in result:
        gap = result["posterior_gap"]
        iwae_gap = f"; IWAE - NLL {gap['iwae_minus_nll']:.3f}" if "iwae_minus_nll" in gap else ""
        lines.append(f"posterior gap  {gap['neg_elbo_minus_nll']:10.3f} nats/image = -ELBO - NLL "
                     f"= KL(q(z|x) || p(z|x)){iwae_gap} (on those {gap['images']} images, whose exact NLL "
                     f"is {gap['exact_nll_on_these_images']:.3f})")
    au = result["active_units"]
    lines.append(f"active units   {au['count']} of {len(au['variances'])} "
                 f"(Var_x E[z|x] > {au['threshold']:g}: {', '.join(f'{v:.3g}' for v in au['variances'])})")
    return lines
