"""The Python way in: `load_run(path)` gives a `Run` that encodes, decodes, samples and interpolates;
`load_mnist` gives images exactly as runs see them; `train` / `resume` are the trainer's own.

    import vaelab
    run = vaelab.load_run("runs/vae-z2")
    x, y = vaelab.load_mnist("test")
    z = run.encode(x[:8])            # (8, D)
    images = run.decode(z)           # (8, 28, 28) in [0, 1]

Images may be given as (N, P), (N, H, W) or (N, 1, H, W) with P = H·W (grey), or (N, C, H, W) or
(N, H, W, C) with P = C·H·W (colour), uint8 in 0-255 or float in [0, 1], torch tensors or numpy arrays;
outputs are torch tensors on the run's device (CPU by default): images (N, H, W) for grey runs,
(N, C, H, W) for colour ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_trained
from .config import RunConfig
from .data import load_images, output_shape
from .device import resolve_device
from .evaluate import evaluate_run
from .models import PCA, decode_to_pixels, encode_mean, model_device, prior_grid, sample_images
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
                 data_dir: str | Path | None = None, **source_options) -> tuple[torch.Tensor, torch.Tensor]:
    """`load_mnist` for any dataset: "mnist", "fashion-mnist", "kmnist", or your own images, "folder:PATH"
    (a folder of image files, flat or one sub-folder per class) or "npz:PATH" (arrays x and y).

    Images (N, H, W) if grey, (N, C, H, W) if colour, float32 in [0, 1]; labels (N,) int64 (-1: none).
    For a folder or array: `source_options` seed (0), valid_fraction (0.1), test_fraction (0.1),
    channels (None: 1 if all grey), image_size ((H, W); None: the images' own), skip_bad (False): the
    same split as a run trained with those values (`Run.images` gives a run's own).
    """
    return load_images(name, split, binarize=binarize, data_dir=data_dir, **source_options)


def accepted_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The per-image shapes `as_pixels` takes for images of `shape`: (H, W) grey or (C, H, W)."""
    if len(shape) == 2 or shape[0] == 1:
        hw = tuple(shape[-2:])
        return [(math.prod(hw),), hw, (1, *hw)]
    c, h, w = shape
    return [(c * h * w,), (c, h, w), (h, w, c)]


def as_pixels(x, shape: tuple[int, ...], *, what: str = "images") -> torch.Tensor:
    """Images in any accepted form -> float32 (N, P) in [0, 1]; ValueError saying what came otherwise.

    Accepted: torch tensors or numpy arrays of shape (N, P), (N, H, W) or (N, 1, H, W) for grey
    `shape` (H, W) or (1, H, W); (N, P), (N, C, H, W) or channels-last (N, H, W, C) for colour
    `shape` (C, H, W); P = prod(shape); holding uint8 0-255 (divided by 255), bool, or floats in [0, 1].
    """
    n_pixels = math.prod(shape)
    dims = "x".join(map(str, shape))
    forms = accepted_shapes(shape)
    expected = (f"{what} as a torch tensor or numpy array of shape "
                f"{', '.join('(N, ' + ', '.join(map(str, f)) + ')' for f in forms)}, uint8 0-255 or float in [0, 1]")
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"expected {expected}; got a numpy array of Python objects")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {expected}; got {type(x).__name__}")
    given = f"shape {tuple(x.shape)}, dtype {str(x.dtype).removeprefix('torch.')}"
    if x.ndim >= 2 and tuple(x.shape[1:]) in forms:
        if len(forms[2]) == 3 and tuple(x.shape[1:]) == forms[2] and forms[2][2] != forms[1][0]:
            x = x.permute(0, 3, 1, 2)  # channels last -> (N, C, H, W)
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
    eval mode), `device`, `epoch` (the epoch whose weights were loaded), `image_shape` (of the images it
    hands out: (H, W) for grey runs such as MNIST's (28, 28), (C, H, W) for colour; from its config).
    Images come in any form `as_pixels` accepts; codes are float tensors (N, D) with D =
    `config.latent_dim`; every output is a torch tensor on `device`, computed without gradients.
    """

    def __init__(self, path: Path, config: RunConfig, model: nn.Module, meta: dict):
        self.path = Path(path)
        self.config = config
        self.model = model
        self.device = model_device(model)
        self.epoch = meta.get("epoch")
        self.image_shape = output_shape(config.image_shape or (1, 28, 28))

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
        """Mean images (N, H, W) (colour: (N, C, H, W)) in [0, 1] of codes z (N, D): the means E[x|z] of the
        run's pixel likelihood (Bernoulli: sigmoid of the decoder's logits), or PCA's linear decode clamped
        to [0, 1]."""
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
        if shape is not None and tuple(shape) in accepted_shapes(self.image_shape):
            return x[None]
        if shape is not None and len(shape) >= 1 and shape[0] == 1:
            return x
        forms = ", ".join(str(f) for f in accepted_shapes(self.image_shape))
        got = f"shape {tuple(shape)}" if shape is not None else type(x).__name__
        raise ValueError(f"{name}: expected one image of shape {forms} or a batch of one; got {got}")

    @torch.no_grad()
    def latent_grid(self, n: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
        """The report's manifold figure as tensors: (images, codes) at the Gaussian quantiles of an even
        grid in (0, 1) (Kingma & Welling's inverse-CDF grid), n per axis; with a learned prior (mog, vamp),
        at that prior's own per-axis quantiles (`models.prior_grid`), where its mass is.

        Latent 2: images (n·n, H, W), codes (n·n, 2), row-major with the top row at the highest c2
        (reshape images to (n, n, H, W) for the picture). Latent 1: images (n, H, W), codes (n, 1).
        PCA's codes are scaled by its code standard deviations, as in `sample`.
        """
        d = self.config.latent_dim
        if d not in (1, 2):
            raise ValueError(f"latent_grid needs latent dimension 1 or 2; this run has {d}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        codes = prior_grid(self.model, n, d)
        if isinstance(self.model, PCA):
            codes = codes * self.model.variances.sqrt()
        return self.decode(codes), codes

    def images(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of `split` ("train" | "valid" | "test") exactly as this run was trained and
        evaluated on them (its dataset, split, binarization): images as `decode` returns them."""
        c = self.config
        if c.is_source:
            options = {"seed": c.seed, "valid_fraction": c.valid_fraction, "test_fraction": c.test_fraction,
                       "channels": c.channels, "image_size": c.image_size, "skip_bad": c.skip_bad}
            return load_images(c.dataset, split, binarize=c.binarize, eval_seed=c.eval_seed, **options)
        return load_images(c.dataset, split, binarize=c.binarize, eval_seed=c.eval_seed, valid_size=c.valid_size)

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
