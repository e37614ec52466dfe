"""The paper's three encoder/decoder pairs, sharing encode() / decode() / reconstruct().

PCA: encoder W, decoder Wᵀ (closed form). Autoencoder: the same idea with MLPs. VAE: the encoder
outputs (m, σ) and the decoder turns a code into Bernoulli logits (eq. 2 of the paper). The VAE owns its
prior p(z): N(0, I) (the paper's), a learned mixture of Gaussians, or the VampPrior (Tomczak & Welling 2018).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConfigError, RunConfig, parse_prior
from .linear import Linear
from .objectives import log_normal, log_standard_normal


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Code (N, D) -> Bernoulli logits (N, P), the encoder's widths in reverse."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], n_pixels: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.to_hidden = nn.Sequential(mlp([latent_dim, *reversed(hidden)]), nn.ReLU())
        self.to_logits = Linear(hidden[0], n_pixels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.to_hidden(z))


class Autoencoder(nn.Module):
    """Deterministic MLP encoder x -> c and decoder c -> logits: the paper's 'neural W and Wᵀ'."""

    def __init__(self, *, n_pixels: int, latent_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.to_hidden = nn.Sequential(mlp([n_pixels, *hidden]), nn.ReLU())
        self.to_code = Linear(hidden[-1], latent_dim)
        self.decoder = Decoder(latent_dim, hidden, n_pixels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.to_hidden(x))  # (N, D)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (N, P) logits

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean decode in pixel space, (N, P) in [0, 1]."""
        return torch.sigmoid(self.decode(self.encode(x)))


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
    """MLP encoder x -> (m, σ), decoder c -> Bernoulli logits, and the prior p(z) (`prior`).

    The second encoder output is σ in the paper's notation; the objective decides what it means
    (log standard deviation for `paper`, log variance for `elbo` and `iwae`).
    """

    def __init__(self, *, n_pixels: int, latent_dim: int, hidden: tuple[int, ...], prior: str = "standard"):
        super().__init__()
        self.to_hidden = nn.Sequential(mlp([n_pixels, *hidden]), nn.ReLU())
        self.to_stats = Linear(hidden[-1], 2 * latent_dim)
        self.decoder = Decoder(latent_dim, hidden, n_pixels)
        self.prior = build_prior(prior, latent_dim=latent_dim, n_pixels=n_pixels)

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
        """Decode of the mean code m, (N, P) in [0, 1]."""
        return torch.sigmoid(self.decode(self.encode(x)[0]))


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
    cls = MODEL_CLASSES[config.model]
    if config.model == "vae":
        return cls(n_pixels=config.n_pixels, latent_dim=config.latent_dim, hidden=config.hidden, prior=config.prior)
    return cls(n_pixels=config.n_pixels, latent_dim=config.latent_dim, hidden=config.hidden)


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
    """Mean image of code z, (N, P) in pixel space: sigmoid of logits, or PCA's linear decode."""
    out = model.decode(z)
    return out.clamp(0, 1) if isinstance(model, PCA) else torch.sigmoid(out)


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
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / n, 1 - 0.5 / n, n))
    if dim == 1:
        return quantiles[:, None], quantiles
    if dim == 2:
        zy, zx = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")
        return torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1), quantiles
    raise ValueError(f"a quantile grid is drawn for latent dimension 1 or 2, not {dim}")
