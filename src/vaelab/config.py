"""The run configuration: one typed dataclass that names everything a training run depends on.

It is stored as `config.json` in every run directory, so `evaluate`, `sample` and `--resume`
rebuild the exact model and data pipeline from the directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

MODELS = ("pca", "autoencoder", "vae")
OBJECTIVES = ("paper", "elbo", "iwae", "reconstruction", "squared-error")
BINARIZE = ("dynamic", "none")
DATASETS = ("mnist", "fashion-mnist", "kmnist")  # known by name; also "folder:PATH" and "npz:PATH" (data.py)
SOURCE_PREFIXES = ("folder:", "npz:")  # your own images: a directory of image files, or an .npz / .npy array
ARCHS = ("mlp", "conv")
# p(x|z) of one pixel (objectives.py): Bernoulli for binary pixels; for intensities in [0, 1] the continuous
# Bernoulli (Loaiza-Ganem & Cunningham 2019) or a Gaussian with a learned per-pixel scale.
LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")
MNIST_SHAPE = (1, 28, 28)  # (C, H, W) of the datasets known by name
PRECISIONS = ("float32", "bfloat16")
PRIORS = ("standard", "mog", "vamp")  # p(z): N(0, I), a learned mixture of Gaussians, the VampPrior
LR_SCHEDULES = ("constant", "cosine")

# The objective each model trains on when none is given; a VAE defaults to the paper's eq. (2)-(3).
DEFAULT_OBJECTIVE = {"pca": "squared-error", "autoencoder": "reconstruction", "vae": "paper"}
# Which objectives make sense for which model (the PCA is fit in closed form).
ALLOWED_OBJECTIVES = {"pca": ("squared-error",), "autoencoder": ("reconstruction",),
                      "vae": ("paper", "elbo", "iwae")}
# Objectives whose regulariser is a KL against p(z), so that a learned prior can stand in for N(0, I); the
# paper's penalty (eq. 3) is written against N(0, 1) and has no other prior.
LEARNED_PRIOR_OBJECTIVES = ("elbo", "iwae")

# Named recipes for `vaelab train --preset NAME` / RunConfig.from_preset: option values that explicit
# options override. Each lever is one the literature argues lowers the test NLL of a small-latent VAE, at a
# cost that stays on a CPU; which lever does what is benchmarks/likelihood_study.py's to measure. Measured
# (README, Better likelihoods): z2-best over seeds 0-2, exact test NLL 123.18 ± 0.23 nats, IWAE_5000
# 124.07 ± 0.23; 300 epochs at 4.0-4.4 s each on 2 cores of an AMD EPYC. z1-best over seeds 0-2: exact
# test NLL 140.69 ± 0.11, IWAE_5000 141.11 ± 0.16 (AMD EPYC Zen 5, 4.1-5.0 s an epoch).
# - iwae, k=5: the importance-weighted bound (Burda et al. 2016) is tighter than the ELBO and trains the
#   decoder towards a higher log p(x); 5 samples keep an epoch within ~3-4x of the ELBO's.
# - vamp:100: the VampPrior (Tomczak & Welling 2018) fits p(z) to the aggregate posterior, the mismatch
#   that costs a 2-dimensional N(0, I) prior most; 100 pseudo-inputs are one small encoder batch per step.
# - warmup 10: KL annealing (Bowman et al. 2016; Sønderby et al. 2016) avoids early inactive units.
# - cosine: the learning rate decays to 0 over the run, which settles the last epochs.
# - batch 512 (not the default 128): the batch these were measured with; 300 epochs at 128 would take ~1.5x.
# - 300 epochs: 20 (reproduce's earlier budget) is not converged (README: best epoch = last epoch); 300 at
#   about 4 s each is the 30 minutes of 2 CPU cores that issue 12 allows, with a margin for slower CPUs.
PRESETS: dict[str, dict] = {
    "z2-best": {"model": "vae", "latent_dim": 2, "objective": "iwae", "k": 5, "prior": "vamp:100", "warmup": 10,
                "lr_schedule": "cosine", "epochs": 300, "batch_size": 512},
    "z1-best": {"model": "vae", "latent_dim": 1, "objective": "iwae", "k": 5, "prior": "vamp:100", "warmup": 10,
                "lr_schedule": "cosine", "epochs": 300, "batch_size": 512},
}
# Settings a model does not use, and why: giving one of them explicitly is refused (`check_options_apply`)
# rather than recorded in config.json as if it had mattered.
UNUSED = {
    "pca": (("epochs", "batch_size", "lr", "beta", "hidden", "precision"), "a pca model is fit in closed form "
            "(in float64), with no epochs, minibatches, learning rate, regulariser, hidden layers or autocast"),
    "autoencoder": (("beta",), "the autoencoder trains on reconstruction alone, with no regulariser to weigh"),
}


# Why 128 and 2e-3: README "Defaults" (measured: at equal wall time the smaller batch reached the lower
# validation loss). On a training set smaller than this, the default means "the whole set".
DEFAULT_BATCH_SIZE = 128


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class RunConfig:
    model: str = "vae"  # "pca" | "autoencoder" | "vae"
    # "paper" (eq. 2-3) | "elbo" (Kingma & Welling) | "iwae" (Burda et al. 2016) | "reconstruction" | "squared-error"
    objective: str = "paper"
    latent_dim: int = 2  # size of the code c; the paper uses 1 and 2
    hidden: tuple[int, ...] = (512, 256)  # encoder MLP widths; the decoder mirrors them
    epochs: int = 30  # total epochs (a resumed run continues up to this number)
    batch_size: int = DEFAULT_BATCH_SIZE  # minibatch size for Adam
    lr: float = 2e-3  # Adam learning rate
    beta: float = 1.0  # weight on the regulariser (paper penalty or KL); 1 is the paper / the ELBO
    # "dynamic": fresh Bernoulli draw per epoch; "none": intensities in [0, 1]. Default (None): "dynamic" for
    # the Bernoulli likelihood, "none" for the continuous ones (they model the intensities themselves)
    binarize: str | None = None
    dataset: str = "mnist"  # "mnist" | "fashion-mnist" | "kmnist" | "folder:PATH" | "npz:PATH" (.npz or .npy)
    seed: int = 0  # seeds weight init, shuffling, dynamic binarization, the VAE noise and a source's own split
    eval_seed: int = 1234  # fixed seed: binarizes validation/test once, draws the validation noise
    valid_size: int = 10000  # the last images of the official training set held out for validation
    # (C, H, W) of one image. Known datasets: (1, 28, 28). A folder / array source: None until its data is
    # loaded; `vaelab train` records the shape it found. None with a custom n_pixels: flat vectors (MLP only)
    image_shape: tuple[int, ...] | None = None
    n_pixels: int | None = None  # C·H·W, filled in from image_shape (kept: config.json files have always held it)
    arch: str = "mlp"  # "mlp" (the paper's) | "conv": strided convolutions down, transposed convolutions up
    likelihood: str = "bernoulli"  # p(x|z) per pixel: "bernoulli" | "continuous-bernoulli" | "gaussian"
    precision: str = "float32"  # "bfloat16": training's matmuls under bfloat16 autocast (native bf16 only)
    k: int = 1  # importance samples per image of the iwae objective (Burda et al. 2016); 1 for the others
    prior: str = "standard"  # p(z): "standard" N(0, I) | "mog:K" K learned Gaussians | "vamp:K" K pseudo-inputs
    warmup: int = 0  # epochs over which the KL weight rises linearly (per step) from 0 to beta; 0: none
    lr_schedule: str = "constant"  # "constant" | "cosine": lr·½(1 + cos(π·step / total steps of `epochs`))
    preset: str | None = None  # the PRESETS name this config was expanded from (recorded; None: none)
    # Folder and array sources only (ignored for the known datasets, which have their own split):
    valid_fraction: float = 0.1  # share of the images held out for validation, drawn with `seed`
    test_fraction: float = 0.1  # share held out for test (a source with train/ and test/ folders keeps its own)
    channels: int | None = None  # 1 (grey) or 3 (colour); None: 1 if every image is grey, else 3
    image_size: tuple[int, ...] | None = None  # (H, W) to resize to; None: the images' common size
    skip_bad: bool = False  # skip (and count) files that are not images or are truncated, instead of failing
    classes: tuple[str, ...] = ()  # class names of a folder with one sub-folder per class (label = index)
    fingerprint: str | None = None  # the source's content key when the run was trained (a later change is noticed)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the JSON-loaded lists and fill in derived fields
        set_(self, "hidden", tuple(int(h) for h in self.hidden))
        set_(self, "classes", tuple(self.classes))
        for name in ("image_shape", "image_size"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, tuple(value))
        if self.binarize is None:
            set_(self, "binarize", "dynamic" if self.likelihood == "bernoulli" else "none")
        # Old config.json files hold n_pixels = 784 and no image_shape: MNIST's 1 x 28 x 28.
        if self.image_shape is None and self.dataset in DATASETS and self.n_pixels in (None, 784):
            set_(self, "image_shape", MNIST_SHAPE)
        if self.image_shape is not None and self.n_pixels is None:
            set_(self, "n_pixels", math.prod(self.image_shape))
        check(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("hidden", "classes", "image_shape", "image_size"):
            d[name] = list(d[name]) if d[name] is not None else None
        return d

    @property
    def is_source(self) -> bool:
        """Whether the dataset is your own (a folder or an array file) rather than one known by name."""
        return self.dataset.startswith(SOURCE_PREFIXES)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> RunConfig:
        """The config of PRESETS[name] with `overrides` on top, recording the preset's name.

        >>> RunConfig.from_preset("z2-best", epochs=5).k
        5
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**d)


def check(c: RunConfig) -> None:
    """Raise ConfigError naming the first bad value."""
    def choice(name: str, value: str, options: tuple[str, ...]) -> None:
        if value not in options:
            raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")

    choice("model", c.model, MODELS)
    choice("objective", c.objective, OBJECTIVES)
    choice("binarize mode", c.binarize, BINARIZE)
    choice("architecture", c.arch, ARCHS)
    choice("likelihood", c.likelihood, LIKELIHOODS)
    if not c.is_source:
        choice("dataset", c.dataset, DATASETS + ("folder:PATH", "npz:PATH"))
    elif not c.dataset.split(":", 1)[1]:
        raise ConfigError(f"dataset {c.dataset!r} names no path; write {c.dataset}PATH")
    if c.likelihood != "bernoulli" and c.binarize != "none":
        raise ConfigError(f"the {c.likelihood} likelihood models intensities in [0, 1]; binarized pixels are "
                          "binary: use the bernoulli likelihood, or binarize 'none'")
    choice("precision", c.precision, PRECISIONS)
    choice("learning-rate schedule", c.lr_schedule, LR_SCHEDULES)
    if c.preset is not None:
        choice("preset", c.preset, tuple(PRESETS))
    if c.objective not in ALLOWED_OBJECTIVES[c.model]:
        raise ConfigError(
            f"model {c.model!r} cannot train on objective {c.objective!r}; "
            f"use: {', '.join(ALLOWED_OBJECTIVES[c.model])}"
        )
    positive = {"latent dim": c.latent_dim, "batch size": c.batch_size, "valid size": c.valid_size}
    if c.n_pixels is not None:
        positive["pixel count"] = c.n_pixels
    for name, value in positive.items():
        if not _whole(value) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {shown(value)}")
    if not _whole(c.epochs) or c.epochs < 0:
        raise ConfigError(f"epochs must be a whole number >= 0, got {shown(c.epochs)}")
    if c.image_shape is not None:
        if len(c.image_shape) != 3 or any(not _whole(v) or v < 1 for v in c.image_shape):
            raise ConfigError(f"image shape must be (C, H, W) of whole numbers >= 1, got {list(c.image_shape)}")
        if c.n_pixels != math.prod(c.image_shape):
            raise ConfigError(f"pixel count {c.n_pixels} does not match image shape {list(c.image_shape)}")
    if c.arch == "conv" and c.model != "pca" and c.image_shape is None and not c.is_source:
        raise ConfigError("the conv architecture needs the image shape (C, H, W); flat vectors take --arch mlp")
    given = [name for name, value in (("channels", c.channels), ("image size", c.image_size),
                                      ("skip bad", c.skip_bad or None)) if value is not None]
    if given and not c.is_source:
        raise ConfigError(f"{', '.join(given)}: options of folder:PATH and npz:PATH sources, not of {c.dataset}")
    if c.channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (colour), got {shown(c.channels)}")
    if c.image_size is not None and (len(c.image_size) != 2 or any(v < 1 for v in c.image_size)):
        raise ConfigError(f"image size must be HxW with whole numbers >= 1, got {list(c.image_size)}")
    for name, value in (("valid fraction", c.valid_fraction), ("test fraction", c.test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {shown(value)}")
    if c.valid_fraction <= 0 or c.valid_fraction + c.test_fraction >= 1:
        raise ConfigError(f"valid fraction ({c.valid_fraction}) must be > 0 and leave training images "
                          f"(valid + test fractions < 1, got {c.valid_fraction + c.test_fraction:g})")
    if not c.hidden or any(h < 1 for h in c.hidden):
        raise ConfigError(f"hidden sizes must be one or more whole numbers >= 1, got {shown(list(c.hidden))}")
    if not (c.lr > 0 and c.lr < float("inf")):
        raise ConfigError(f"learning rate must be a positive number, got {shown(c.lr)}")
    if not (c.beta >= 0 and c.beta < float("inf")):
        raise ConfigError(f"beta must be a number >= 0, got {shown(c.beta)}")
    if c.model == "pca" and c.latent_dim > c.n_pixels:
        raise ConfigError(f"latent dim {c.latent_dim} is more than a pca model can have: it has at most one "
                          f"component per pixel ({c.n_pixels})")
    if not isinstance(c.k, int) or isinstance(c.k, bool) or c.k < 1:
        raise ConfigError(f"k (importance samples) must be a whole number >= 1, got {shown(c.k)}")
    if c.k != 1 and c.objective != "iwae":
        raise ConfigError(f"k (importance samples) applies to the iwae objective only, not {c.objective!r}; "
                          "use --objective iwae")
    kind, _ = parse_prior(c.prior)
    if kind != "standard" and c.objective not in LEARNED_PRIOR_OBJECTIVES:
        raise ConfigError(f"a learned prior ({c.prior}) needs a VAE trained on {' or '.join(LEARNED_PRIOR_OBJECTIVES)}"
                          f", not {c.model} ({c.objective}): the paper's penalty is written against N(0, I)")
    if not isinstance(c.warmup, int) or isinstance(c.warmup, bool) or c.warmup < 0:
        raise ConfigError(f"warmup must be a whole number of epochs >= 0, got {shown(c.warmup)}")
    regularized = c.model == "vae"
    if c.warmup and not regularized:
        raise ConfigError(f"warmup raises the KL weight, and a {c.model} has no KL term")
    if c.lr_schedule != "constant" and c.model == "pca":
        raise ConfigError("PCA is fit in closed form: it has no learning rate to schedule")


def parse_prior(text: str) -> tuple[str, int]:
    """'standard' -> ('standard', 1); 'mog:16' -> ('mog', 16); 'vamp:100' -> ('vamp', 100); ConfigError else."""
    if not isinstance(text, str):
        raise ConfigError(f"prior must be standard, mog:K or vamp:K, got {text!r}")
    if text == "standard":
        return "standard", 1
    kind, _, count = text.partition(":")
    if kind not in PRIORS[1:] or not count.isdigit() or int(count) < 1:
        raise ConfigError(f"prior must be standard, mog:K or vamp:K with K a whole number >= 1 (components or "
                          f"pseudo-inputs), got {text!r}")
    return kind, int(count)


def check_data_size(c: RunConfig, n_train: int) -> None:
    """Raise ConfigError if `c` cannot train on `n_train` training images (a batch larger than the
    training set, more PCA components than the images span). Called before anything is written.
    The default batch size is the exception: on a smaller set it means the whole set, one batch."""
    if c.model == "pca":
        if c.latent_dim > n_train - 1:
            raise ConfigError(f"latent dim {c.latent_dim} is more than a pca fit to {n_train} training "
                              f"image{'s' if n_train != 1 else ''} can have (at most {max(n_train - 1, 0)}: "
                              f"the images less their mean span that many directions); lower --latent-dim "
                              f"or --valid-size")
    elif c.batch_size > n_train and c.batch_size != DEFAULT_BATCH_SIZE:
        raise ConfigError(f"batch size {c.batch_size} is larger than the training set ({n_train} images); "
                          f"use --batch-size {n_train} or less")


def check_options_apply(model: str, given: Iterable[str]) -> None:
    """ConfigError if any of the settings named in `given` (RunConfig field names the user set
    explicitly) has no effect on `model`; the message names them as options and says why."""
    unused, why = UNUSED.get(model, ((), ""))
    idle = [name for name in given if name in unused]
    if idle:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in idle)
        article = "an" if model[0] in "aeiou" else "a"
        raise ConfigError(f"{flags} {'has' if len(idle) == 1 else 'have'} no effect on {article} {model} model "
                          f"({why}); drop {'it' if len(idle) == 1 else 'them'}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    """A value as the user wrote it in JSON or on the command line (true, not Python's True)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


# --- parsing what the user types: one set of rules for every list, number and path ---------------
# Strict: plain ASCII digits (no "1_000", "+5" or "٣"), no empty list items ("10,,20"), no empty paths.

_WHOLE = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_whole(text: str, option: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """'12' -> 12 for the command-line option `option`; ConfigError naming it for anything else."""
    limits = (f" >= {minimum}" if minimum is not None else "") + (f" and <= {maximum}" if maximum is not None else "")
    text = text.strip()
    if not _WHOLE.fullmatch(text):
        raise ConfigError(f"{option} takes a whole number{limits}, got {text!r}")
    value = int(text)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{option} takes a whole number{limits}, got {value}")
    return value


def parse_number(text: str, option: str) -> float:
    """'2e-3' -> 0.002; a finite decimal number, else ConfigError naming `option`."""
    text = text.strip()
    if not _NUMBER.fullmatch(text) or float(text) in (float("inf"), float("-inf")):
        raise ConfigError(f"{option} takes a finite number like 0.002 or 2e-3, got {text!r}")
    return float(text)


def split_list(text: str, option: str, *, expects: str, distinct: bool = True) -> list[str]:
    """'a,b' -> ['a', 'b'] (items stripped); ConfigError for an empty list, an empty item or (if
    `distinct`) a repeated one. `expects` says what `option` takes, for the message."""
    items = [item.strip() for item in text.split(",")]
    problem = ("it is empty" if text.strip() == "" else "an item is empty" if "" in items
               else "an item is repeated" if distinct and len(set(items)) != len(items) else None)
    if problem:
        raise ConfigError(f"{option} takes {expects}, got {text!r}: {problem}")
    return items


def parse_whole_numbers(text: str, option: str, *, example: str, distinct: bool = False) -> tuple[int, ...]:
    """'512,256' -> (512, 256): comma-separated whole numbers >= 1 (distinct ones if `distinct`)."""
    expects = f"comma-separated {'distinct ' if distinct else ''}whole numbers >= 1 like {example}"
    items = split_list(text, option, expects=expects, distinct=distinct)
    bad = [item for item in items if not _WHOLE.fullmatch(item) or int(item) < 1]
    if bad:
        raise ConfigError(f"{option} takes {expects}, got {text!r}: {bad[0]!r} is not one")
    return tuple(int(item) for item in items)


def parse_choices(text: str, option: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """'b,a' -> ('a', 'b') in the order of `choices`: distinct names from `choices`, comma-separated."""
    expects = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
    expects += " (comma-separated)" if len(choices) > 1 else ""
    items = split_list(text, option, expects=expects)
    unknown = [item for item in items if item not in choices]
    if unknown:
        raise ConfigError(f"{option} takes {expects}, got {text!r}: {unknown[0]!r} is not one")
    return tuple(c for c in choices if c in items)


def parse_path(text: str, option: str) -> str:
    """A path as typed, refusing the empty one ("" would mean the current directory)."""
    if text.strip() == "" or "\0" in text:
        raise ConfigError(f"{option} takes a path, got {text!r}")
    return text


def parse_image_size(text: str) -> tuple[int, int]:
    """'64x48' -> (64, 48) (H, W), with a clear error for anything else."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"--image-size takes HxW like 64x48 (height x width in pixels), got {text!r}")
    return size


def parse_hidden(text: str) -> tuple[int, ...]:
    """'512,256' -> (512, 256), with a clear error for anything else."""
    return parse_whole_numbers(text, "--hidden", example="512,256")


# --- `vaelab reproduce`: the experiment's budget (here, so the CLI's help can state it) -----------

LATENT_DIMS = (1, 2)  # the paper's latent dimensions
# Default budget, chosen so that `make reproduce` stays within 15 minutes on 2 cores of the slower CPUs
# measured (README "Defaults"): 18 trained runs x DEFAULT_EPOCHS epochs at batch 128 in two worker
# processes, at about 6.7 s per epoch each on an AMD EPYC Zen 3, is about 9 minutes of training, and the
# likelihood and classifier evaluation about 3.5 more. (The earlier budget, 20 epochs at batch 512, took
# 21.5 minutes there, for a validation loss 2.3 nats lower.)
DEFAULT_EPOCHS = 8
DEFAULT_SEEDS = 3
# --quick: the same pipeline in well under a minute (used by the tests): one seed, three epochs,
# on the first QUICK_TRAIN_IMAGES images of the training split (validation and test sets unchanged).
QUICK_EPOCHS = 3
QUICK_SEEDS = 1
QUICK_TRAIN_IMAGES = 10000
# Likelihoods and classifier scores in the table (evaluate_run's nll / classifier options). Exact NLL
# (quadrature, latent <= 2) on every test image; IWAE and the ELBO split with IWAE_K samples on the
# first IWAE_IMAGES test images, which fits the 15-minute budget; `--iwae-k 5000 --iwae-images 10000`
# is the long version. --quick uses the QUICK_* values.
IWAE_K, IWAE_IMAGES, REALISM_IMAGES = 1000, 300, 1000
QUICK_NLL_IMAGES, QUICK_IWAE_K, QUICK_IWAE_IMAGES, QUICK_REALISM_IMAGES = 1000, 100, 200, 300
