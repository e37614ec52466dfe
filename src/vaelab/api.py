"""The Python way in: `load_run(path)` gives a `Run` that encodes, decodes, samples and interpolates;
`load_mnist` gives images exactly as runs see them; `train` / `resume` are the trainer's own.

    import vaelab
    run = vaelab.load_run("runs/vae-z2")
    x, y = vaelab.load_mnist("test")
    z = run.encode(x[:8])            # (8, D)
    images = run.decode(z)           # (8, 28, 28) in [0, 1]

Images may be given as (N, P), (N, H, W) or (N, 1, H, W) with P = H·W, uint8 in 0-255 or float in
[0, 1], torch tensors or numpy arrays; outputs are torch tensors on the run's device (CPU by default).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_trained
from .config import RunConfig
from .data import image_shape, load_images
from .device import resolve_device
from .evaluate import evaluate_run
from .models import PCA, decode_to_pixels, encode_mean, model_device, quantile_grid, sample_images
from .objectives import LOG_VARIANCE, posterior
from .runfiles import read_metrics


def load_mnist(split: str = "test", *, binarize: str = "dynamic",
               data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 28, 28) float32 in [0, 1] and labels (N,) int64 of `split` ("train" | "valid" | "test").

    Binarized as training and evaluation do (`binarize="dynamic"`): "valid" and "test" are exactly the
    images every run is validated and tested on; "train" is one seeded Bernoulli draw (training draws
    afresh each batch). `binarize="none"` gives the grayscale intensities. Data is looked up in
    `data_dir`, then $VAELAB_DATA, then the cache, then downloaded. Other datasets: `load_dataset`.
    """
    return load_images("mnist", split, binarize=binarize, data_dir=data_dir)


def load_dataset(name: str, split: str = "test", *, binarize: str = "dynamic",
                 data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`load_mnist` for any dataset vaelab knows by name ("mnist", "fashion-mnist", "kmnist")."""
    return load_images(name, split, binarize=binarize, data_dir=data_dir)


def as_pixels(x, shape: tuple[int, ...], *, what: str = "images") -> torch.Tensor:
    """Images in any accepted form -> float32 (N, P) in [0, 1]; ValueError saying what came otherwise.

    Accepted: torch tensors or numpy arrays of shape (N, P), (N, *shape) or (N, 1, *shape), where
    P = prod(shape), holding uint8 0-255 (divided by 255), bool, or floats in [0, 1].
    """
    n_pixels = math.prod(shape)
    dims = "x".join(map(str, shape))
    expected = (f"{what} as a torch tensor or numpy array of shape (N, {n_pixels}), (N, {', '.join(map(str, shape))}) "
                f"or (N, 1, {', '.join(map(str, shape))}), uint8 0-255 or float in [0, 1]")
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"expected {expected}; got a numpy array of Python objects")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {expected}; got {type(x).__name__}")
    given = f"shape {tuple(x.shape)}, dtype {str(x.dtype).removeprefix('torch.')}"
    if x.shape[1:] in (torch.Size([n_pixels]), torch.Size(shape), torch.Size([1, *shape])) and x.ndim >= 2:
        x = x.reshape(len(x), n_pixels)
    else:
        raise ValueError(f"expected {expected} ({dims} images); got {given}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if x.dtype == torch.bool:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"expected {expected}; got {given} (integers other than uint8 are ambiguous: "
                         "divide by 255 or convert to float in [0, 1])")
    x = x.float()
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons
        raise ValueError(f"expected {expected}; got {given} with values outside [0, 1] (or NaN)")
    return x


class Run:
    """A trained run, rebuilt from its directory: its config, its best-validation model, and what a
    notebook does with them. Make one with `vaelab.load_run(path)`.

    Attributes: `path` (the run directory), `config` (its RunConfig), `model` (the torch module, in
    eval mode), `device`, `epoch` (the epoch whose weights were loaded), `image_shape` ((H, W)).
    Images come in any form `as_pixels` accepts; codes are float tensors (N, D) with D =
    `config.latent_dim`; every output is a torch tensor on `device`, computed without gradients.
    """

    def __init__(self, path: Path, config: RunConfig, model: nn.Module, meta: dict):
        self.path = Path(path)
        self.config = config
        self.model = model
        self.device = model_device(model)
        self.epoch = meta.get("epoch")
        self.image_shape = image_shape(config.dataset)

    def __repr__(self) -> str:
        c = self.config
        return (f"Run({str(self.path)!r}: {c.model} ({c.objective}), latent dim {c.latent_dim}, "
                f"epoch {self.epoch}, on {self.device})")

    def _pixels(self, x) -> torch.Tensor:
        return as_pixels(x, self.image_shape).to(self.device)

    def _images(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.reshape(len(flat), *self.image_shape)

    def _codes(self, z) -> torch.Tensor:
        if isinstance(z, np.ndarray):
            z = torch.from_numpy(z)
        d = self.config.latent_dim
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != d or not z.is_floating_point():
            got = (f"shape {tuple(z.shape)}, dtype {str(z.dtype).removeprefix('torch.')}" if hasattr(z, "shape")
                   else type(z).__name__)
            raise ValueError(f"expected codes as a float tensor or array of shape (N, {d}); got {got}")
        return z.to(device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def encode(self, x) -> torch.Tensor:
        """Codes (N, D) of images x: the mean m of q(z|x) for a VAE, the code itself otherwise."""
        return encode_mean(self.model, self._pixels(x))

    @torch.no_grad()
    def posterior(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE's q(z|x) = N(mean, std²) for images x, each (N, D).

        The objective's own meaning of the encoder's σ is applied: exp(σ) is the standard deviation
        for `paper` (eq. 2), exp(σ/2) for `elbo` (σ is the log variance). ValueError for models without q.
        """
        if self.config.objective not in LOG_VARIANCE:
            raise ValueError(f"a {self.config.model} has no posterior q(z|x) (only VAEs do); use encode()")
        m, logvar = posterior(self.model, self.config.objective, self._pixels(x))
        return m, (0.5 * logvar).exp()

    @torch.no_grad()
    def decode(self, z) -> torch.Tensor:
        """Mean images (N, H, W) in [0, 1] of codes z (N, D): Bernoulli means (sigmoid of the decoder's
        logits), or PCA's linear decode clamped to [0, 1]."""
        return self._images(decode_to_pixels(self.model, self._codes(z)))

    @torch.no_grad()
    def reconstruct(self, x) -> torch.Tensor:
        """decode(encode(x)): mean images (N, H, W) in [0, 1]."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images (n, H, W) in [0, 1]: decodes of codes drawn with `seed` from the VAE's prior (N(0, I), or
        its learned mixture / VampPrior; the autoencoder: N(0, I); PCA: N(0, diag(its code variances))).
        Same seed, same images."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        return self._images(sample_images(self.model, n, seed=seed))

    @torch.no_grad()
    def interpolate(self, x_a, x_b, steps: int = 9) -> torch.Tensor:
        """Decodes (steps, H, W) of `steps` codes evenly spaced on the straight line from encode(x_a) to
        encode(x_b), both ends included; x_a and x_b are single images ((P,), (H, W), (1, H, W) or a
        batch of one). With an odd `steps` the middle one is the paper's midpoint (α1 + α2)/2."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise ValueError(f"steps must be a whole number >= 2, got {steps!r}")
        a, b = (self.encode(self._single(x, name)) for x, name in ((x_a, "x_a"), (x_b, "x_b")))
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]  # (steps, 1)
        return self.decode((1 - t) * a + t * b)

    def _single(self, x, name: str):
        """One image in any form -> a batch of one (validated by as_pixels)."""
        shape = getattr(x, "shape", None)
        n_pixels = math.prod(self.image_shape)
        if shape is not None and tuple(shape) in ((n_pixels,), tuple(self.image_shape), (1, *self.image_shape)):
            return x.reshape(1, n_pixels)
        if shape is not None and len(shape) >= 1 and shape[0] == 1:
            return x
        raise ValueError(f"{name}: expected one image of shape ({n_pixels},), {tuple(self.image_shape)} or a batch "
                         f"of one; got {('shape ' + str(tuple(shape))) if shape is not None else type(x).__name__}")

    @torch.no_grad()
    def latent_grid(self, n: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
        """The report's manifold figure as tensors: (images, codes) at the Gaussian quantiles of an even
        grid in (0, 1) (Kingma & Welling's inverse-CDF grid), n per axis.

        Latent 2: images (n·n, H, W), codes (n·n, 2), row-major with the top row at the highest c2
        (reshape images to (n, n, H, W) for the picture). Latent 1: images (n, H, W), codes (n, 1).
        PCA's codes are scaled by its code standard deviations, as in `sample`.
        """
        d = self.config.latent_dim
        if d not in (1, 2):
            raise ValueError(f"latent_grid needs latent dimension 1 or 2; this run has {d}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        codes, _ = quantile_grid(n, d)
        codes = codes.to(self.device)
        if isinstance(self.model, PCA):
            codes = codes * self.model.variances.sqrt()
        return self.decode(codes), codes

    def metrics(self) -> list[dict]:
        """metrics.jsonl as a list of dicts, one per epoch (train_* and valid_* terms in nats per image)."""
        return read_metrics(self.path)

    def evaluate(self, *, nll: str | None = None, k: int | None = None, iwae_images: int | None = None,
                 classifier: bool = False, data_dir: str | Path | None = None, **options) -> dict:
        """What `vaelab evaluate RUN` computes and saves to evaluation.json, returned as its dict.

        Keys "valid" and "test" (the objective's mean terms, nats per image, and the squared error);
        with `nll` ("exact" | "iwae" | "exact,iwae") also "likelihood"; with `classifier`, "realism".
        Further options are those of `vaelab.evaluate.evaluate_run`.
        """
        if k is not None:
            options["k"] = k
        return evaluate_run(self.path, nll=nll, iwae_images=iwae_images, classifier=classifier,
                            data_dir=data_dir, device=self.device, **options)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """The run in `run_dir` (made by `vaelab train` or `vaelab.train`) with its best-validation weights.

    `device`: "cpu" (default), "cuda", "mps" or "auto". Errors name the file that is missing or damaged.
    """
    model, config, meta = load_trained(run_dir, resolve_device(device))
    return Run(Path(run_dir), config, model, meta)
