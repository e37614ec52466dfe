"""`vaelab reproduce`: the paper's experiment end to end, then the results table, figures and report.

PCA → autoencoder → VAE (the paper's eq. 2-3 and the standard ELBO) for latent dimension 1 and 2,
several seeds, one architecture, optimizer, data split and pixel model for all. Every run is an
ordinary run directory under OUT/runs/ made by `vaelab.training.train`: a finished run is reused, an
unfinished one resumed, so an interrupted reproduce continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from . import executors
from . import figures as figs
from .checkpoint import checkpoint_paths, load_trained
from .config import (
    DEFAULT_EPOCHS,
    DEFAULT_SEEDS,
    IWAE_IMAGES,
    IWAE_K,
    LATENT_DIMS,
    PRESETS,
    QUICK_EPOCHS,
    QUICK_IWAE_IMAGES,
    QUICK_IWAE_K,
    QUICK_NLL_IMAGES,
    QUICK_REALISM_IMAGES,
    QUICK_SEEDS,
    QUICK_TRAIN_IMAGES,
    REALISM_IMAGES,
    RunConfig,
    parse_whole_numbers,
)
from .data import SPECS, DataError, PixelData, load_data, with_source
from .device import resolve_device
from .evaluate import evaluate_run, saved_evaluation
from .explorer import write_explorer
from .models import decode_to_pixels, encode_mean, quantile_grid, sample_images
from .progress import to_stderr
from .report import Setup, write_report
from .runfiles import (
    CONFIG_FILE,
    MODEL_FILE,
    TIMING_FILE,
    CheckpointError,
    load_config,
    read_metrics,
    write_json,
)
from .table import MODEL_LABELS, load_record
from .training import NonFiniteLossError, TrainingInterrupted, resume, train
from .version import __version__

# The paper's sequence of models, each with the objective it trains on.
EXPERIMENT = (("pca", "squared-error"), ("autoencoder", "reconstruction"), ("vae", "paper"), ("vae", "elbo"))
RUN_NOTE = "reproduce.json"  # in each run directory: the training images it was given
INTERPOLATION_CLASSES = (0, 1)  # full moon and half moon: a round digit and a stroke
EXPLORER_FILE = "explorer.html"  # the latent explorer page, in the report directory


class ReproduceError(ValueError):
    """An existing run directory does not match what this reproduce asks for."""


@dataclass(frozen=True)
class Settings:
    epochs: int  # training epochs of each neural run (PCA is fit in closed form)
    seeds: tuple[int, ...]  # one run per seed for every model and latent dimension
    latent_dims: tuple[int, ...] = LATENT_DIMS
    train_images: int | None = None  # None: the whole training split; N: its first N images (--quick)
    quick: bool = False
    nll_images: int | None = None  # exact NLL on the first N test images (None: all)
    iwae_k: int = IWAE_K  # importance samples per image for IWAE and the ELBO split
    iwae_images: int = IWAE_IMAGES  # IWAE and the ELBO split on the first N test images
    realism_images: int = REALISM_IMAGES  # interpolation midpoints and prior samples scored per run
    recipe: bool = False  # also train the likelihood recipe (PRESETS "z{d}-best") for each latent dim that has one

    def command(self, out: Path, base: RunConfig | None = None) -> str:
        """The explicit command line that reproduces these settings (and `base`'s data and model choices)."""
        if self.quick and (self.epochs, len(self.seeds)) == (QUICK_EPOCHS, QUICK_SEEDS):
            parts = ["vaelab reproduce --quick"]
        else:
            parts = ["vaelab reproduce"] + (["--quick"] if self.quick else [])
            parts += [f"--epochs {self.epochs}", f"--seeds {len(self.seeds)}"]
        if self.latent_dims != LATENT_DIMS:
            parts.append("--latent-dims " + ",".join(map(str, self.latent_dims)))
        default = make_settings(quick=self.quick)
        if self.iwae_k != default.iwae_k:
            parts.append(f"--iwae-k {self.iwae_k}")
        if self.iwae_images != default.iwae_images:
            parts.append(f"--iwae-images {self.iwae_images}")
        if self.recipe:
            parts.append("--recipe")
        defaults = RunConfig()
        for name in ("dataset", "arch", "likelihood"):  # the choices `vaelab reproduce` takes as options
            if base is not None and getattr(base, name) != getattr(defaults, name):
                parts.append(f"--{name} {getattr(base, name)}")
        return " ".join(parts + [f"--out {out}"])


def make_settings(*, quick: bool = False, epochs: int | None = None, seeds: int | None = None,
                  latent_dims: tuple[int, ...] = LATENT_DIMS, iwae_k: int | None = None,
                  iwae_images: int | None = None, recipe: bool = False) -> Settings:
    """Defaults for the full or the --quick experiment; explicit epochs/seeds/IWAE sizes override either."""
    n_seeds = seeds if seeds is not None else (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    n_epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    if n_seeds < 1:
        raise ReproduceError(f"--seeds must be >= 1, got {n_seeds}")
    if n_epochs < 1:
        raise ReproduceError(f"--epochs must be >= 1, got {n_epochs}")
    if not latent_dims or any(d < 1 for d in latent_dims):
        raise ReproduceError(f"--latent-dims must be whole numbers >= 1, got {list(latent_dims)}")
    if recipe and not any(recipe_name(d) for d in latent_dims):
        have = ", ".join(name for name in PRESETS if name.endswith("-best"))
        raise ReproduceError(f"--recipe: there is no recipe for latent dimension(s) {list(latent_dims)} "
                             f"(recipes: {have})")
    k = iwae_k if iwae_k is not None else (QUICK_IWAE_K if quick else IWAE_K)
    n_iwae = iwae_images if iwae_images is not None else (QUICK_IWAE_IMAGES if quick else IWAE_IMAGES)
    if k < 1 or n_iwae < 1:
        raise ReproduceError(f"--iwae-k and --iwae-images must be >= 1, got {k} and {n_iwae}")
    return Settings(epochs=n_epochs, seeds=tuple(range(n_seeds)), latent_dims=tuple(latent_dims),
                    train_images=QUICK_TRAIN_IMAGES if quick else None, quick=quick,
                    nll_images=QUICK_NLL_IMAGES if quick else None, iwae_k=k, iwae_images=n_iwae,
                    realism_images=QUICK_REALISM_IMAGES if quick else REALISM_IMAGES, recipe=recipe)


def parse_latent_dims(text: str) -> tuple[int, ...]:
    """'1,2' -> (1, 2): distinct whole numbers >= 1 (config.parse_whole_numbers' rules and messages)."""
    return parse_whole_numbers(text, "--latent-dims", example="1,2", distinct=True)


@dataclass(frozen=True)
class RunSpec:
    config: RunConfig
    train_images: int | None

    @property
    def name(self) -> str:
        c = self.config
        return f"{c.preset}-s{c.seed}" if c.preset else f"{c.model}-{c.objective}-z{c.latent_dim}-s{c.seed}"


def recipe_name(latent_dim: int) -> str | None:
    """The PRESETS recipe for this latent dimension ("z2-best"), or None where there is none."""
    name = f"z{latent_dim}-best"
    return name if name in PRESETS else None


def plan(settings: Settings, base: RunConfig | None = None) -> list[RunSpec]:
    """All runs, seed-major so that an interrupted reproduce has every model for the first seeds."""
    base = base or RunConfig()
    specs = []
    for seed in settings.seeds:
        for latent_dim in settings.latent_dims:
            for model, objective in EXPERIMENT:
                epochs = 0 if model == "pca" else settings.epochs  # PCA has no epochs: closed form
                config = dataclasses.replace(base, model=model, objective=objective, latent_dim=latent_dim,
                                             epochs=epochs, seed=seed)
                specs.append(RunSpec(config, settings.train_images))
            recipe = recipe_name(latent_dim) if settings.recipe else None
            if recipe:  # its own budget (300 epochs), except under --quick, which tries the pipeline
                config = dataclasses.replace(base, **PRESETS[recipe], seed=seed, preset=recipe)
                if settings.quick:  # the warm-up shrinks with the budget: the same share of the run
                    config = dataclasses.replace(config, epochs=settings.epochs, warmup=round(
                        config.warmup * settings.epochs / config.epochs))
                specs.append(RunSpec(config, settings.train_images))
    return specs


# --- runs ----------------------------------------------------------------------------------------

def epochs_done(run_dir: Path) -> int:
    """Epochs a run has finished (from metrics.jsonl); 0 for a new run."""
    history = read_metrics(run_dir)
    return history[-1]["epoch"] if history else 0


def is_complete(spec: RunSpec, run_dir: Path) -> bool:
    if not (run_dir / MODEL_FILE).exists():
        return False
    return epochs_done(run_dir) >= spec.config.epochs


def check_existing(spec: RunSpec, run_dir: Path) -> None:
    """Raise ReproduceError if `run_dir` holds a run made with other settings than `spec`."""
    old = load_config(run_dir)
    mine = spec.config
    # a longer --epochs continues a run; the preset is the name its settings were given, not a setting
    different = [f"{f.name} {getattr(old, f.name)!r} (asked {getattr(mine, f.name)!r})"
                 for f in dataclasses.fields(RunConfig)
                 if f.name not in ("epochs", "preset") and getattr(old, f.name) != getattr(mine, f.name)]
    note = run_dir / RUN_NOTE
    old_images = json.loads(note.read_text()).get("train_images") if note.exists() else None
    if old_images != spec.train_images:
        different.append(f"training images {old_images or 'all'} (asked {spec.train_images or 'all'})")
    done = epochs_done(run_dir)
    if done > mine.epochs:
        different.append(f"{done} epochs done (asked {mine.epochs})")
    if different:
        raise ReproduceError(f"{run_dir} was made with other settings: {'; '.join(different)}. "
                             "Pass --force to retrain it, or choose another --out.")


def ensure_run(spec: RunSpec, run_dir: Path, *, data: PixelData, force: bool = False, device: str = "auto",
               log=None) -> str:
    """Make `run_dir` a finished run of `spec`: 'reused', 'resumed' or 'trained' (what happened).

    `data` is the full PixelData; for a --quick spec only its first `spec.train_images` training
    images are used. `log` receives the trainer's per-epoch lines.
    """
    log = log or (lambda message: None)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if spec.train_images is not None:
        data = dataclasses.replace(data, train=data.train[:spec.train_images])
    if (run_dir / CONFIG_FILE).exists():
        check_existing(spec, run_dir)
        if is_complete(spec, run_dir):
            return "reused"
        if checkpoint_paths(run_dir):
            resume(run_dir, epochs=spec.config.epochs, data=data, device=device, progress=False, log=log)
            return "resumed"
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_NOTE, {"train_images": spec.train_images})
    train(spec.config, run_dir, data=data, device=device, progress=False, log=log, keep=(RUN_NOTE,))
    return "trained"


def evaluate_for_table(run_dir: Path, *, data: PixelData, device: str = "auto", settings: Settings | None = None,
                       data_dir: str | Path | None = None, log: Callable[[str], None] = to_stderr,
                       reuse: bool = False) -> dict:
    """The evaluation that the table's columns read (the run's evaluation.json).

    A column that needs more than the objective's terms (say an exact likelihood) turns the matching
    `evaluate_run` option on here and is declared in `report.COLUMNS`. Likelihoods: exact NLL where
    the latent dimension is <= 2, else IWAE only (PCA and the autoencoder get "n/a"); classifier
    scores for every model of a known dataset (the classifier is trained once from `data_dir` and
    cached; `log` gets its messages); none for your own images. `reuse` (the run itself was reused):
    an evaluation.json whose last request was this one is returned as it is (a learned prior's exact
    NLL takes minutes); any other request, or a run trained or resumed now, is evaluated again.
    """
    s = settings or make_settings()
    config = load_config(run_dir)
    options = {"nll": "exact,iwae" if config.latent_dim <= 2 else "iwae", "k": s.iwae_k, "nll_images": s.nll_images,
               "iwae_images": s.iwae_images, "classifier": config.dataset in SPECS,  # (classifiers: MNIST-format)
               "classifier_images": s.realism_images}
    saved = saved_evaluation(run_dir, **options) if reuse else None
    if saved is not None:
        log(f"{run_dir.name}: its evaluation.json already holds these scores (reused)")
        return saved
    return evaluate_run(run_dir, data=data, device=device, data_dir=data_dir, bar=False, log=log, **options)


class Progress:
    """One display for the whole reproduce: which run, which epoch, time left (by tqdm's rate).

    Counts epochs (a PCA fit counts as one). When stderr is not a terminal there is no bar; instead
    `finished` and `note` write one line each (a redirected log still shows progress).
    """

    EPOCH_LINE = re.compile(r"^(epoch (\d+)/(\d+))|^(PCA fit)")
    VALID_LOSS = re.compile(r"valid loss ([-\d.]+)")

    def __init__(self, total: int, n_runs: int, enabled: bool | None = None):
        self.n_runs = n_runs
        self.bar = tqdm(total=total, unit="epoch", file=sys.stderr, dynamic_ncols=True,
                        disable=None if enabled is None else not enabled,
                        bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}]{postfix}")

    def start(self, index: int, name: str) -> None:
        self.bar.set_description_str(f"run {index + 1}/{self.n_runs} {name}")

    def log(self, message: str) -> None:
        match = self.EPOCH_LINE.match(message)
        if match:
            self.bar.update(1)
            loss = self.VALID_LOSS.search(message)
            self.bar.set_postfix_str(f"{match.group(1) or match.group(4)}"
                                     + (f", valid loss {loss.group(1)}" if loss else ""))

    def phase(self, text: str) -> None:
        self.bar.set_description_str(text)
        self.bar.set_postfix_str("")

    def note(self, text: str) -> None:
        """A line of its own without a bar; the bar's description with one."""
        if self.bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            self.phase(text)

    def advance(self, units: int) -> None:
        self.bar.update(units)

    def failed(self, index: int, name: str, error: str) -> None:
        """A failed run's line: shown with or without a bar."""
        tqdm.write(f"run {index + 1}/{self.n_runs} {name} FAILED: {error.splitlines()[0]}", file=sys.stderr)

    def finished(self, index: int, name: str, what: str, seconds: float, best_valid_loss: float | None) -> None:
        """The line for a finished run: name, what happened, seconds, best validation loss."""
        if self.bar.disable:
            loss = "" if best_valid_loss is None else f", best valid loss {best_valid_loss:.3f}"
            print(f"run {index + 1}/{self.n_runs} {name}: {what} in {seconds:.1f} s{loss}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        self.bar.close()


def remaining_units(spec: RunSpec, run_dir: Path, force: bool) -> int:
    """Progress units (epochs; 1 for a PCA fit) still to do for `spec`."""
    if force or not (run_dir / CONFIG_FILE).exists():
        return max(spec.config.epochs, 1)
    if spec.config.model == "pca":
        return 0 if (run_dir / MODEL_FILE).exists() else 1
    return max(spec.config.epochs - epochs_done(run_dir), 0)


# --- figures -------------------------------------------------------------------------------------

@torch.no_grad()
def make_figures(out: Path, runs: dict[tuple[str, str, int, int], Path], data: PixelData, settings: Settings,
                 *, device: str = "auto") -> tuple[dict[str, Path], dict]:
    """Every figure of the report; runs maps (model, objective, latent dim, seed) -> run directory.

    Figures show the runs of the first seed (the curves show all seeds). Returns (figure name ->
    PNG path, code statistics of the latent-2 test codes for the discussion).
    """
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    seed, dims = settings.seeds[0], settings.latent_dims
    models = {(m, o, d): load_trained(path, device)[:2] for (m, o, d, s), path in runs.items() if s == seed}
    paths = {name: fig_dir / f"{name}.png" for name in figs.FIGURES}
    label = {key: f"{MODEL_LABELS[key[:2]]}, z={key[2]}" for key in models}

    figs.vae_structure(models[("vae", "paper", 2 if 2 in dims else dims[-1])][1], paths["structure"])

    curves = {}
    for (m, o, d, _), path in sorted(runs.items(), key=lambda item: item[0][3]):
        if m != "pca":
            curves.setdefault((MODEL_LABELS[(m, o)], d), []).append(read_metrics(path))
    figs.training_curves(curves, paths["curves"])

    test_x, test_y = data.test.cpu(), data.splits.test_y
    shape, mnist = data.image_shape, next(iter(models.values()))[1].dataset in SPECS  # MNIST-format: digits
    first = _first_of_each_class(test_y)  # a test digit per class (your own images: per class, or the first 10)
    rows = [(label[(*mo, d)], _run(models[(*mo, d)][0], lambda m: m.reconstruct, test_x[first]))
            for d in dims for mo in EXPERIMENT]
    figs.reconstructions(test_x[first], rows, paths["reconstructions"], shape=shape,
                         what="test digits" if mnist else "test images")

    panels = [[(label[(*mo, d)], sample_images(models[(*mo, d)][0], 36, seed=0).cpu()) for mo in EXPERIMENT]
              for d in dims]
    figs.samples(panels, paths["samples"], shape=shape)

    codes = {(*mo, d): _run(models[(*mo, d)][0], lambda m: partial(encode_mean, m), test_x)
             for mo in EXPERIMENT for d in dims}
    names = None if mnist else (list(data.splits.classes) or [str(c) for c in range(int(test_y.max()) + 1)])
    figs.latent_space([(MODEL_LABELS[mo], [(d, codes[(*mo, d)]) for d in dims]) for mo in EXPERIMENT],
                      test_y, paths["latent"], names=names, what="digit" if mnist else "class")
    stats_dim = 2 if 2 in dims else dims[-1]
    code_stats = {MODEL_LABELS[mo]: {
        "dim": stats_dim, "seed": seed, "std": codes[(*mo, stats_dim)].std(0).tolist(),
        # share of codes inside the central 95% interval of N(0, 1) in every dimension
        "inside": float((codes[(*mo, stats_dim)].abs() < 1.96).all(1).double().mean()),
    } for mo in EXPERIMENT}

    k = 15  # grid side
    grid_codes = {d: quantile_grid(k, d)[0] for d in (1, 2)}
    quantiles = quantile_grid(k, 1)[1]
    manifold_panels = [(MODEL_LABELS[mo], {d: _run(models[(*mo, d)][0], lambda m: partial(decode_to_pixels, m),
                                                   grid_codes[d]) for d in dims if d in grid_codes})
                       for mo in EXPERIMENT if mo[0] == "vae"]  # only the VAEs have a prior to take quantiles of
    figs.manifold(manifold_panels, quantiles, paths["manifold"], shape=shape)

    classes = interpolation_classes(test_y)
    a, b = ((int(torch.nonzero(test_y == c)[0, 0]) for c in classes) if classes else (0, 1))
    t = torch.linspace(0, 1, 11)[:, None]  # step 5 is t = 0.5: the midpoint (α1 + α2)/2
    interp_rows = []
    for d in dims:
        for mo in EXPERIMENT:
            model = models[(*mo, d)][0]
            alpha = _run(model, lambda m: partial(encode_mean, m), test_x[[a, b]])  # (2, D): α1, α2
            line = (1 - t) * alpha[0] + t * alpha[1]  # (11, D)
            interp_rows.append((label[(*mo, d)], _run(model, lambda m: partial(decode_to_pixels, m), line)))
    shown = tuple(names[c] for c in classes) if classes and names and not mnist else classes
    figs.interpolation(test_x[a], test_x[b], interp_rows, paths["interpolation"], mid_index=5,
                       classes=shown, shape=shape, what="test digits" if mnist else "test images")
    return paths, code_stats


def make_explorer(out: Path, runs: dict[tuple[str, str, int, int], Path], settings: Settings, *,
                  data_dir: str | Path | None = None, device: str = "auto") -> tuple[str, ...]:
    """OUT/explorer.html with the neural latent-2 runs of the first seed (autoencoder and both VAEs)
    side by side; returns their labels, or () when latent 2 is not among the settings or the runs are not
    what the page can decode (it runs MLP decoders of Bernoulli pixels only)."""
    if 2 not in settings.latent_dims:
        return ()
    shown = [(m, o) for m, o in EXPERIMENT if m != "pca"]  # PCA has no neural decoder to run in the page
    paths = [runs[(m, o, 2, settings.seeds[0])] for m, o in shown]
    config = load_config(paths[0])
    if (config.arch, config.likelihood) != ("mlp", "bernoulli"):
        return ()
    write_explorer(out / EXPLORER_FILE, paths, data_dir=data_dir, device=device)
    return tuple(MODEL_LABELS[mo] for mo in shown)


def _first_of_each_class(y: torch.Tensor, at_most: int = 10) -> torch.Tensor:
    """Indices of the first test image of each class (up to `at_most` classes); images without labels
    (-1): the first `at_most`."""
    found = [int(torch.nonzero(y == c)[0, 0]) for c in sorted(set(y.tolist())) if c >= 0][:at_most]
    return torch.tensor(found if len(found) > 1 else list(range(min(at_most, len(y)))))


def interpolation_classes(y: torch.Tensor) -> tuple[int, int] | None:
    """The classes whose first test images the interpolation figure joins: the paper's full and half moon
    (a 0 and a 1) where both exist, else the first two classes; None for images without labels."""
    present = sorted(c for c in set(y.tolist()) if c >= 0)
    if all(c in present for c in INTERPOLATION_CLASSES):
        return INTERPOLATION_CLASSES
    return tuple(present[:2]) if len(present) >= 2 else None


def _run(model: torch.nn.Module, method, x: torch.Tensor) -> torch.Tensor:
    """method(model)(x) with x moved to the model's device; the result back on the CPU."""
    device = next(iter(model.state_dict().values())).device
    return method(model)(x.to(device)).cpu()


# --- the whole pipeline --------------------------------------------------------------------------

def reproduce(out: str | Path = "report", *, settings: Settings | None = None, force: bool = False,
              data_dir: str | Path | None = None, device: str = "auto", progress: bool | None = None,
              base: RunConfig | None = None, executor: Executor | None = None) -> Path:
    """Train (or reuse) every run, evaluate them, draw the figures, write the report; returns index.html.

    `progress`: None shows the overall progress bar only when stderr is a terminal. `executor`: where
    the runs train (default: one after another in this process); the results are the same for all.
    A run that fails is reported while the others finish; then ReproduceFailed names every failed run.
    """
    executor = executor or Executor()
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]  # 1-minute load: tells a reader whether the cores were shared
    out = Path(out)
    settings = settings or make_settings()
    base = base or RunConfig()
    data = None
    if base.is_source:  # read first: the runs record the image shape and classes it reveals
        data = load_data(base, data_dir)
        base = with_source(base, data)
    specs = plan(settings, base)
    runs_dir = out / "runs"
    for spec in specs:  # refuse mismatched runs before any training starts
        run_dir = runs_dir / spec.name
        if not force and (run_dir / CONFIG_FILE).exists():
            check_existing(spec, run_dir)
    data = data or load_data(base, data_dir)  # one in-memory copy shared by every run
    if settings.train_images is not None and settings.train_images > len(data.train):
        raise ReproduceError(f"--quick trains on {settings.train_images} images but the training split has "
                             f"only {len(data.train)}")

    units = [remaining_units(s, runs_dir / s.name, force) for s in specs]
    bar = Progress(sum(units), len(specs), progress)
    what: dict[str, str] = {}
    try:
        t0 = time.perf_counter()
        if executor.kind == "serial":
            failures = _train_serially(specs, runs_dir, data=data, force=force, device=device, bar=bar, what=what,
                                       command=settings.command(out, base))
        else:
            failures = _train_in_parallel(specs, runs_dir, units, executor, data_dir=data_dir, force=force,
                                          device=device, bar=bar, what=what, command=settings.command(out, base))
        if failures:
            raise ReproduceFailed(f"{len(failures)} of {len(specs)} runs failed: "
                                  + "; ".join(f"{name}: {error.splitlines()[0]}" for name, error in failures)
                                  + f". The other runs are saved; give the same command again to retry the failed "
                                  f"ones (finished runs are reused): {settings.command(out, base)}")
        train_seconds = time.perf_counter() - t0
        bar.phase("evaluating")
        t0 = time.perf_counter()
        for spec in specs:
            bar.note(f"evaluating {spec.name}")
            evaluate_for_table(runs_dir / spec.name, data=data, device=device, settings=settings,
                               data_dir=data_dir, log=bar.note, reuse=what.get(spec.name) == "reused")
        eval_seconds = time.perf_counter() - t0
        bar.phase("figures")
        t0 = time.perf_counter()
        runs = {(s.config.model, s.config.objective, s.config.latent_dim, s.config.seed): runs_dir / s.name
                for s in specs if s.config.preset is None}  # the figures show the paper's four models
        figure_paths, code_stats = make_figures(out, runs, data, settings, device=device)
        figure_seconds = time.perf_counter() - t0
        bar.phase("explorer")
        t0 = time.perf_counter()
        explorer_runs = make_explorer(out, runs, settings, data_dir=data_dir, device=device)
        explorer_seconds = time.perf_counter() - t0
        bar.phase("report")
        records = [load_record(runs_dir / spec.name) for spec in specs]
        setup = Setup(
            command=settings.command(out, base),
            version=__version__,
            epochs=settings.epochs,
            seeds=settings.seeds,
            latent_dims=settings.latent_dims,
            train_images=settings.train_images,
            split_sizes=(len(data.train), len(data.valid), len(data.test)),
            base=base,
            machine=f"{platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
                    f"({torch.get_num_threads()} threads), device {resolve_device(device)}; 1-minute load "
                    f"average {load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (above "
                    f"{os.cpu_count()}, other processes shared the cores and slowed the runs down)",
            runs_reused=sum(v == "reused" for v in what.values()),
            runs_total=len(specs),
            train_seconds_total=sum(_training_seconds(runs_dir / s.name) for s in specs),
            phase_seconds={"training": train_seconds, "evaluation": eval_seconds, "figures": figure_seconds,
                           **({"explorer": explorer_seconds} if explorer_runs else {})},
            wall_seconds=time.perf_counter() - started,
            figure_seed=settings.seeds[0],
            interpolation_classes=interpolation_classes(data.splits.test_y),
            code_stats=code_stats,
            explorer=EXPLORER_FILE if explorer_runs else None,
            explorer_runs=explorer_runs,
        )
        index = write_report(out, records, setup, figure_paths)
    finally:
        bar.close()
    return index


@dataclass(frozen=True)
class Executor:
    """Where reproduce trains its runs: "serial" (this process), "processes" (`workers` local worker
    processes, each with its share of the cores) or "ray" (Ray tasks; `address` None starts Ray here)."""

    kind: str = "serial"
    workers: int = 1
    address: str | None = None


# Two single-thread workers train 16% (AMD EPYC Zen 5) to 22% (Zen 3) more epochs per second than one
# process on both cores of a 2-core machine, to the same bytes: the default on a CPU with 2 cores or more.
AUTO_WORKERS = 2


def default_executor(device: str = "auto") -> Executor:
    """`vaelab reproduce` without --workers or --ray: AUTO_WORKERS local workers on a CPU with at least that
    many cores (each with its share of them), else one process (a GPU, or one core)."""
    if resolve_device(device).type == "cpu" and executors.available_cores() >= AUTO_WORKERS:
        return Executor("processes", workers=AUTO_WORKERS)
    return Executor()


class ReproduceFailed(RuntimeError):
    """Some runs failed (each named with its error); the others were trained and saved."""


def _train_serially(specs: list[RunSpec], runs_dir: Path, *, data: PixelData, force: bool, device: str,
                    bar: Progress, what: dict, command: str) -> list[tuple[str, str]]:
    """Each run in this process, sharing one copy of the data; returns the failed runs (name, error)."""
    failures = []
    for i, spec in enumerate(specs):
        bar.start(i, spec.name)
        run_started = time.perf_counter()
        try:
            what[spec.name] = ensure_run(spec, runs_dir / spec.name, data=data, force=force, device=device,
                                         log=bar.log)
        except TrainingInterrupted:
            raise TrainingInterrupted(f"interrupted in run {spec.name} (its checkpoint is saved); to continue "
                                      f"every run, give the same command again: {command}") from None
        except (NonFiniteLossError, DataError, CheckpointError, OSError) as e:
            failures.append((spec.name, f"{type(e).__name__}: {e}"))
            bar.failed(i, spec.name, failures[-1][1])
            continue
        bar.finished(i, spec.name, what[spec.name], time.perf_counter() - run_started,
                     _best_valid_loss(runs_dir / spec.name))
    return failures


def train_job(spec: RunSpec, run_dir: str, data_dir: str | None, force: bool, device: str, threads: int) -> dict:
    """One run in a worker process or Ray task: its own copy of the data and its share of the cores."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    what = ensure_run(spec, Path(run_dir), data=load_data(spec.config, data_dir), force=force, device=device)
    return {"what": what, "seconds": time.perf_counter() - started}


def _train_in_parallel(specs: list[RunSpec], runs_dir: Path, units: list[int], executor: Executor, *,
                       data_dir: str | Path | None, force: bool, device: str, bar: Progress,
                       what: dict, command: str = "the same command") -> list[tuple[str, str]]:
    """The runs on `executor`, reported as they finish; returns the failed runs (name, error). Ctrl-C stops
    the workers (each run keeps its last checkpoint) and raises TrainingInterrupted naming `command`."""
    workers = executor.workers if executor.kind == "processes" else 1
    threads = executors.threads_per_job(max(workers, 1))
    todo = []
    for i, spec in enumerate(specs):  # a finished run is reused here, not in a worker that loads the data first
        run_dir = runs_dir / spec.name
        if not force and (run_dir / CONFIG_FILE).exists() and is_complete(spec, run_dir):
            what[spec.name] = "reused"
            bar.finished(i, spec.name, "reused", 0.0, _best_valid_loss(run_dir))
        else:
            todo.append(i)
    jobs = [(specs[i], str(runs_dir / specs[i].name), None if data_dir is None else str(data_dir), force, device,
             threads) for i in todo]
    outcomes = (executors.processes(train_job, jobs, executor.workers) if executor.kind == "processes"
                else executors.ray(train_job, jobs, executor.address, threads))
    bar.phase(f"training {len(todo)} runs ({executor.kind})")
    failures = []
    try:
        for j, (status, value) in outcomes if todo else ():
            i = todo[j]
            name = specs[i].name
            bar.advance(units[i])
            if status == "ok":
                what[name] = value["what"]
                bar.finished(i, name, value["what"], value["seconds"], _best_valid_loss(runs_dir / name))
            else:
                failures.append((name, str(value)))
                bar.failed(i, name, str(value))
    except KeyboardInterrupt:
        try:  # the executor stops its workers (they got the Ctrl-C too), if it was not what raised this
            outcomes.throw(KeyboardInterrupt)
        except KeyboardInterrupt:
            pass
        where = {"processes": "worker processes", "ray": "Ray tasks"}[executor.kind]
        raise TrainingInterrupted(f"interrupted while training in {where} (each run keeps its last "
                                  f"checkpoint); to continue every run, give the same command again: "
                                  f"{command}") from None
    finally:  # (anything else that stops this loop asks the workers to stop and waits for them)
        outcomes.close()
    return failures


def _best_valid_loss(run_dir: Path) -> float | None:
    history = read_metrics(run_dir)
    return min((h["valid_loss"] for h in history), default=None)


def _training_seconds(run_dir: Path) -> float:
    """Wall time of all epochs a run has trained, over all invocations (timing.jsonl)."""
    path = run_dir / TIMING_FILE
    if not path.exists():
        return 0.0
    return sum(json.loads(line)["seconds"] for line in path.read_text().splitlines() if line.strip())
