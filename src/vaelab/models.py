"""The paper's three encoder/decoder pairs, sharing encode() / decode() / reconstruct().

PCA: encoder W, decoder Wᵀ (closed form). Autoencoder: the same idea with neural networks. VAE: the
encoder outputs (m, σ) and the decoder turns a code into the parameters of p(x|z) (eq. 2 of the paper;
Bernoulli logits by default). The networks are MLPs (the paper's) or, with `arch="conv"`, strided
convolutions down and transposed convolutions up for images of any C x H x W. The VAE owns its prior
p(z): N(0, I) (the paper's), a learned mixture of Gaussians, or the VampPrior (Tomczak & Welling 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, RunConfig, parse_prior
from .linear import Linear
from .objectives import log_normal, log_standard_normal, pixel_mean

# Channels of the conv architecture's two stride-2 layers (each halves H and W, so images are padded
# to a multiple of 4). The dense layer after them has the width hidden[-1].
CONV_CHANNELS = (32, 64)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Code (N, D) -> decoder outputs (N, P) (logits of p(x|z)), the encoder's widths in reverse.

    With the Gaussian likelihood it also holds `raw_scale` (P,), the free parameter of the per-pixel
    standard deviation (objectives.gaussian_scale); None otherwise."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], n_pixels: int, likelihood: str = "bernoulli"):
        super().__init__()
        self.latent_dim = latent_dim
        self.to_hidden = nn.Sequential(mlp([latent_dim, *reversed(hidden)]), nn.ReLU())
        self.to_logits = Linear(hidden[0], n_pixels)
        self.raw_scale = _raw_scale(likelihood, n_pixels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.to_hidden(z))


def _raw_scale(likelihood: str, n_pixels: int) -> nn.Parameter | None:
    # softplus(-2) + 1/256 ≈ 0.13: a start near the spread of natural images' pixels
    return nn.Parameter(torch.full((n_pixels,), -2.0)) if likelihood == "gaussian" else None


def padded(size: int) -> int:
    """The side a conv network works on: `size` rounded up to a multiple of 4 (two stride-2 halvings)."""
    return 4 * math.ceil(size / 4)


class ConvBody(nn.Module):
    """Images (N, P) with P = C·H·W -> features (N, width): pad to multiples of 4, two 4x4 convolutions of
    stride 2 (ReLU), a dense layer (ReLU). The encoder trunk of `arch="conv"`."""

    def __init__(self, image_shape: tuple[int, int, int], width: int):
        super().__init__()
        self.image_shape = image_shape
        c, h, w = image_shape
        c1, c2 = CONV_CHANNELS
        self.convs = nn.Sequential(nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU())
        self.to_features = nn.Sequential(Linear(c2 * padded(h) // 4 * padded(w) // 4, width), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        images = x.reshape(-1, c, h, w)  # (N, C, H, W)
        images = F.pad(images, (0, padded(w) - w, 0, padded(h) - h))  # zeros right and below
        return self.to_features(self.convs(images).flatten(1))  # (N, width)


class ConvDecoder(nn.Module):
    """Code (N, D) -> decoder outputs (N, P): a dense layer to (64, H'/4, W'/4), two 4x4 transposed
    convolutions of stride 2, cropped from the padded H' x W' back to H x W. `raw_scale` as in Decoder."""

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int], likelihood: str = "bernoulli"):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = image_shape
        c, h, w = image_shape
        c1, c2 = CONV_CHANNELS
        self.grid = (c2, padded(h) // 4, padded(w) // 4)
        self.to_hidden = nn.Sequential(Linear(latent_dim, width), nn.ReLU(), Linear(width, math.prod(self.grid)),
                                       nn.ReLU())
        self.deconvs = nn.Sequential(nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1))
        self.raw_scale = _raw_scale(likelihood, c * h * w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        out = self.deconvs(self.to_hidden(z).reshape(-1, *self.grid))  # (N, C, H', W')
        return out[:, :, :h, :w].reshape(len(z), c * h * w)  # (N, P) logits


def _trunk(*, n_pixels: int, hidden: tuple[int, ...], arch: str,
           image_shape: tuple[int, int, int] | None) -> tuple[nn.Module, int]:
    """(encoder trunk x (N, P) -> features (N, width), width) for `arch`."""
    if arch == "conv":
        if image_shape is None:
            raise ConfigError("the conv architecture needs the image shape (C, H, W)")
        return ConvBody(image_shape, hidden[-1]), hidden[-1]
    return nn.Sequential(mlp([n_pixels, *hidden]), nn.ReLU()), hidden[-1]


def _decoder(*, n_pixels: int, latent_dim: int, hidden: tuple[int, ...], arch: str,
             image_shape: tuple[int, int, int] | None, likelihood: str) -> nn.Module:
    if arch == "conv":
        return ConvDecoder(latent_dim, hidden[-1], image_shape, likelihood)
    return Decoder(latent_dim, hidden, n_pixels, likelihood)


class Autoencoder(nn.Module):
    """Deterministic encoder x -> c and decoder c -> logits: the paper's 'neural W and Wᵀ'."""

    def __init__(self, *, n_pixels: int, latent_dim: int, hidden: tuple[int, ...], arch: str = "mlp",
                 image_shape: tuple[int, int, int] | None = None, likelihood: str = "bernoulli"):
        super().__init__()
        self.likelihood = likelihood  # p(x|z) per pixel (objectives.pixel_log_prob)
        # Built in this order (trunk, code layer, decoder): the weights are drawn in it from the seed.
        self.to_hidden, width = _trunk(n_pixels=n_pixels, hidden=hidden, arch=arch, image_shape=image_shape)
        self.to_code = Linear(width, latent_dim)
        self.decoder = _decoder(n_pixels=n_pixels, latent_dim=latent_dim, hidden=hidden, arch=arch,
                                image_shape=image_shape, likelihood=likelihood)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.to_hidden(x))  # (N, D)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (N, P) logits

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean decode in pixel space, (N, P) in [0, 1]."""
        return pixel_mean(self.likelihood, self.decode(self.encode(x)))


# --- the prior p(z) -----------------------------------------------------------------------------------
# Each prior is an equal-weight mixture of K diagonal Gaussians, `components(model)` -> (means, logvars),
# each (K, D): the standard prior is the one component N(0, I). Its parameters are the VAE's (state_dict,
# checkpoints, the optimizer), registered after the encoder and decoder so that a model's other weights
# are drawn from the seed as they are with N(0, I).

class StandardPrior(nn.Module):
    """p(z) = N(0, I): the paper's prior, no parameters."""

    kind = "standard"

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def components(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(1, self.latent_dim, device=model_device(model))
        return zeros, zeros


class MixturePrior(nn.Module):
    """p(z) = 1/K Σ_k N(z; μ_k, diag(exp(2·log_scale_k))): K Gaussians with learned means and log scales.

    Means start at N(0, I) draws, scales at 1."""

    kind = "mog"

    def __init__(self, latent_dim: int, k: int):
        super().__init__()
        self.means = nn.Parameter(torch.randn(k, latent_dim))  # (K, D)
        self.log_scales = nn.Parameter(torch.zeros(k, latent_dim))  # (K, D) log standard deviations

    def components(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return self.means, 2 * self.log_scales


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K Σ_k q(z|u_k), the model's own posterior at K
    learned pseudo-inputs u_k = sigmoid(raw_k) in [0, 1]^P (raw starts near 0: grey images).

    q is read as N(m, exp(σ)) with σ the log variance, the meaning under `elbo` and `iwae` (the only
    objectives a learned prior trains with)."""

    kind = "vamp"

    def __init__(self, n_pixels: int, k: int):
        super().__init__()
        self.raw_inputs = nn.Parameter(0.01 * torch.randn(k, n_pixels))  # (K, P), before the sigmoid

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-images (K, P) in [0, 1]."""
        return torch.sigmoid(self.raw_inputs)

    def components(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return model.encode(self.pseudo_inputs())  # (K, D) each: m and the log variance


def build_prior(spec: str, *, latent_dim: int, n_pixels: int) -> nn.Module:
    """The prior named by `spec` ("standard", "mog:K", "vamp:K"; config.parse_prior)."""
    kind, k = parse_prior(spec)
    if kind == "mog":
        return MixturePrior(latent_dim, k)
    if kind == "vamp":
        return VampPrior(n_pixels, k)
    return StandardPrior(latent_dim)


def log_mixture(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k N(z; means_k, diag(exp(logvars_k))), (..., D) with (K, D) each -> (...,) nats,
    computed in z's dtype."""
    means, logvars = means.to(z.dtype), logvars.to(z.dtype)
    per_component = log_normal(z[..., None, :], means, logvars)  # (..., K)
    return torch.logsumexp(per_component, -1) - math.log(len(means))


class VAE(nn.Module):
    """Encoder x -> (m, σ), decoder c -> logits of p(x|z), and the prior p(z) (`prior`).

    The second encoder output is σ in the paper's notation; the objective decides what it means
    (log standard deviation for `paper`, log variance for `elbo` and `iwae`).
    """

    def __init__(self, *, n_pixels: int, latent_dim: int, hidden: tuple[int, ...], arch: str = "mlp",
                 image_shape: tuple[int, int, int] | None = None, likelihood: str = "bernoulli",
                 prior: str = "standard"):
        super().__init__()
        self.likelihood = likelihood  # p(x|z) per pixel (objectives.pixel_log_prob)
        # Built in this order (trunk, stats layer, decoder): the weights are drawn in it from the seed.
        self.to_hidden, width = _trunk(n_pixels=n_pixels, hidden=hidden, arch=arch, image_shape=image_shape)
        self.to_stats = Linear(width, 2 * latent_dim)
        self.decoder = _decoder(n_pixels=n_pixels, latent_dim=latent_dim, hidden=hidden, arch=arch,
                                image_shape=image_shape, likelihood=likelihood)
        self.prior = build_prior(prior, latent_dim=latent_dim, n_pixels=n_pixels)  # after: seeded weights as before

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in closed form, (..., D) -> (...,) nats, in z's dtype (float64 for the quadrature)."""
        if self.prior.kind == "standard":
            return log_standard_normal(z)
        return log_mixture(z, *self.prior.components(self))

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n codes (n, D) drawn from p(z) with `generator` (N(0, I): the same draws as always)."""
        device = model_device(self)
        d = self.decoder.latent_dim
        if self.prior.kind == "standard":
            return torch.randn(n, d, generator=generator, device=device)
        means, logvars = self.prior.components(self)  # (K, D) each
        which = torch.randint(len(means), (n,), generator=generator, device=device)  # equal weights
        e = torch.randn(n, d, generator=generator, device=device)
        return means[which] + (0.5 * logvars[which]).exp() * e

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, sigma = self.to_stats(self.to_hidden(x)).chunk(2, dim=-1)  # (N, D) each
        return m, sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (N, P) logits

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode of the mean code m, (N, P) in [0, 1] (the likelihood's mean)."""
        return pixel_mean(self.likelihood, self.decode(self.encode(x)[0]))


class PCA(nn.Module):
    """Closed-form linear encoder/decoder: z = (x - mean) Wᵀ, x̂ = z W + mean.

    W (D, P) holds the top-D principal directions of the training data (orthonormal rows), so the
    reconstruction is the best rank-D approximation in squared error (Eckart-Young).
    """

    def __init__(self, *, n_pixels: int, latent_dim: int, hidden: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_pixels))  # (P,)
        self.register_buffer("components", torch.zeros(latent_dim, n_pixels))  # W, (D, P)
        self.register_buffer("variances", torch.ones(latent_dim))  # variance of each code, (D,)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> PCA:
        """Fit to data x (N, P): eigenvectors of the covariance, computed in float64."""
        x64 = x.to(torch.float64)
        mean = x64.mean(0)
        centered = x64 - mean
        cov = centered.T @ centered / (len(x) - 1)  # (P, P)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        d = self.components.shape[0]
        top = eigvecs[:, -d:].flip(-1).T  # (D, P), largest first
        # Fix each direction's sign (largest-magnitude entry positive) so fits are reproducible.
        signs = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
        self.mean.copy_(mean)
        self.components.copy_(top * signs)
        self.variances.copy_(eigvals[-d:].flip(-1).clamp_min(0))
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T  # (N, D)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.components + self.mean  # (N, P), pixel values (not logits)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


MODEL_CLASSES = {"pca": PCA, "autoencoder": Autoencoder, "vae": VAE}


def build_model(config: RunConfig) -> nn.Module:
    """A freshly initialised model for `config` (weights drawn from torch's global RNG)."""
    if config.n_pixels is None:
        raise ConfigError(f"the image shape of {config.dataset} is not known yet: it is read from the data "
                          "(vaelab.train records it)")
    if config.model == "pca":
        return PCA(n_pixels=config.n_pixels, latent_dim=config.latent_dim)
    return MODEL_CLASSES[config.model](n_pixels=config.n_pixels, latent_dim=config.latent_dim, hidden=config.hidden,
                                       arch=config.arch, image_shape=config.image_shape,
                                       likelihood=config.likelihood,
                                       **({"prior": config.prior} if config.model == "vae" else {}))


def init_model(config: RunConfig, device: str | torch.device = "cpu") -> nn.Module:
    """The model for `config` with weights drawn from `config.seed`, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        try:
            torch.manual_seed(config.seed)
        except ValueError:
            raise ConfigError(f"seed {config.seed} is out of range: torch takes -2**63 to 2**64 - 1") from None
        try:
            model = build_model(config)
        except (RuntimeError, TypeError, MemoryError) as e:  # sizes beyond memory or beyond int64
            raise ConfigError(f"cannot build a {config.model} with hidden sizes {list(config.hidden)} and latent "
                              f"dim {config.latent_dim}: too large ({str(e).splitlines()[0]})") from None
    return model.to(device)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights (or PCA's buffers) live."""
    return next(iter(model.state_dict().values())).device


def decode_to_pixels(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Mean image of code z, (N, P) in pixel space: the likelihood's mean E[x|z], or PCA's linear decode."""
    out = model.decode(z)
    return out.clamp(0, 1) if isinstance(model, PCA) else pixel_mean(model.likelihood, out)


def encode_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The deterministic code of x, (N, D): m for a VAE, the code for the others."""
    z = model.encode(x)
    return z[0] if isinstance(z, tuple) else z


@torch.no_grad()
def sample_images(model: nn.Module, n: int, *, seed: int = 0) -> torch.Tensor:
    """n images (n, P) in [0, 1]: decodes of codes drawn from the VAE's prior p(z) (N(0, I) unless learned;
    the autoencoder: N(0, I); PCA: N(0, diag(variances))).

    The codes come from a generator seeded with `seed` on the model's device."""
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    if isinstance(model, VAE):
        return decode_to_pixels(model, model.sample_prior(n, generator))
    latent_dim = model.components.shape[0] if isinstance(model, PCA) else model.decoder.latent_dim
    z = torch.randn(n, latent_dim, generator=generator, device=device)
    if isinstance(model, PCA):
        z = z * model.variances.sqrt()
    return decode_to_pixels(model, z)


def quantile_grid(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes at the Gaussian quantiles of an even grid in (0, 1), n per axis (Kingma & Welling's
    manifold figure): returns (codes, quantiles (n,)); codes are (n, 1) for dim 1 and (n·n, 2) for
    dim 2, row-major with the top row at the highest c2 (the picture's layout)."""
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(_levels(n))
    return _grid(quantiles[:, None].expand(n, dim), dim), quantiles


# Draws from a learned prior whose per-axis quantiles place the grid (their sampling error is far below
# the grid's spacing: the quantile at level 1/(2n) of 100 000 draws moves by about 1% of a step)
PRIOR_GRID_DRAWS = 100_000


def prior_grid(model: nn.Module, n: int, dim: int) -> torch.Tensor:
    """quantile_grid's codes at the quantiles of the model's own prior: for a learned prior (mog, vamp) the
    per-axis quantiles of PRIOR_GRID_DRAWS seeded draws from it, so that the grid covers where p(z) puts
    its mass; N(0, I)'s exact quantiles otherwise. (n, 1) or (n·n, 2), same layout, on the model's device."""
    if not (isinstance(model, VAE) and model.prior.kind != "standard"):
        return quantile_grid(n, dim)[0].to(model_device(model))
    generator = torch.Generator(device=model_device(model)).manual_seed(0)
    draws = model.sample_prior(PRIOR_GRID_DRAWS, generator)  # (S, D)
    return _grid(torch.quantile(draws, _levels(n).to(draws), dim=0), dim)  # quantiles (n, D)


def _levels(n: int) -> torch.Tensor:
    return torch.linspace(0.5 / n, 1 - 0.5 / n, n)


def _grid(quantiles: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-axis quantiles (n, D), increasing -> the grid's codes in the picture's layout."""
    if dim == 1:
        return quantiles[:, :1]
    if dim == 2:
        zy, zx = torch.meshgrid(quantiles[:, 1].flip(0), quantiles[:, 0], indexing="ij")
        return torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1)
    raise ValueError(f"a quantile grid is drawn for latent dimension 1 or 2, not {dim}")
