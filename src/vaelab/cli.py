"""The `vaelab` command: parse arguments, call library functions, turn errors into one clear message.

Exit codes, one rule: 2 for anything the user can fix in the command (a bad option or value, an option
that has no effect, a path that is a file or missing, data not where the command says, run files that
are missing, damaged, in use or foreign); 1 for a failure during the work (damaged dataset files, a
non-finite loss, a full disk); 130 interrupted; 0 success. Every number, list and path is parsed by
config.py's strict parsers (through `Parsed` below).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from .config import (
    DEFAULT_EPOCHS,
    DEFAULT_OBJECTIVE,
    DEFAULT_SEEDS,
    IWAE_IMAGES,
    IWAE_K,
    LATENT_DIMS,
    PRESETS,
    QUICK_EPOCHS,
    QUICK_IWAE_IMAGES,
    QUICK_IWAE_K,
    QUICK_SEEDS,
    ConfigError,
    RunConfig,
    check_options_apply,
    parse_hidden,
    parse_image_size,
    parse_number,
    parse_path,
    parse_whole,
)
from .data import DataError, DataNotFoundError
from .distributed import DistributedError
from .runfiles import CheckpointError
from .training import NonFiniteLossError, TrainingInterrupted
from .version import __version__

# Help is plain click text (rich_markup_mode=None below), but typer < 0.20 escapes its "[default: ...]"
# notes for rich whenever rich is installed, printing "\[default: auto]"; this tells it not to.
typer.core.HAS_RICH = False

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="vaelab: PCA -> autoencoder -> VAE on MNIST, as derived in the paper; trained and measured.\n\n"
    "Examples:\n\n\b\n"
    "  vaelab train --model vae --objective paper --latent-dim 2 --epochs 30 --out runs/vae-z2\n"
    "  vaelab evaluate runs/vae-z2\n"
    "  vaelab sample runs/vae-z2 -n 64 -o samples.png\n"
    "  vaelab train --resume runs/vae-z2 --epochs 40",
)

USAGE = 2  # exit code for bad input
FAILURE = 1  # exit code for a runtime problem


class UsageProblem(Exception):
    """Bad input found after parsing (e.g. flags that conflict)."""


class Parsed(click.ParamType):
    """A click type that hands the text to one of config.py's strict parsers (their ConfigError is
    bad input, exit 2); defaults, which are not text, pass through."""

    def __init__(self, name: str, parse, **limits):
        self.name, self.parse, self.limits = name, parse, limits

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        name = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name if param else self.name
        return self.parse(value, name, **self.limits)


WHOLE = Parsed("integer", parse_whole)
NUMBER = Parsed("number", parse_number)
PATH = Parsed("path", parse_path)


def whole(minimum: int | None = None, maximum: int | None = None) -> Parsed:
    return Parsed("integer", parse_whole, minimum=minimum, maximum=maximum)


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vaelab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                                   help="Print the vaelab version and exit.")] = False) -> None:
    """vaelab: PCA -> autoencoder -> VAE on MNIST, as derived in the paper; trained and measured."""


DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", click_type=PATH,
    help="Data root holding MNIST/raw/; when given, the only place looked at (else $VAELAB_DATA, then the cache).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU) | cpu | cuda | mps")]
RunDir = Annotated[Path, typer.Argument(click_type=PATH, help="A run directory made by `vaelab train`")]
D = RunConfig()  # the defaults, shown in --help (the options default to None so --resume can refuse them)


@app.command(epilog="Example: vaelab train --model vae --objective paper --latent-dim 2 --epochs 30 --out runs/vae-z2")
def train(
    model: Annotated[str | None, typer.Option(help=f"pca | autoencoder | vae  [default: {D.model}]")] = None,
    objective: Annotated[str | None, typer.Option(
        help="paper | elbo | iwae (vae; iwae: the importance-weighted bound of Burda et al. 2016 with --k samples); "
             "reconstruction (autoencoder)  [default: paper for vae]")] = None,
    k: Annotated[int | None, typer.Option(
        "--k", click_type=WHOLE,
        help=f"Importance samples per image of --objective iwae (1: the ELBO)  [default: {D.k}]")] = None,
    prior: Annotated[str | None, typer.Option(
        help="p(z): standard (N(0, I)) | mog:K (K Gaussians, learned means and scales) | vamp:K (VampPrior, K "
             f"learned pseudo-inputs); learned ones with --objective elbo or iwae  [default: {D.prior}]")] = None,
    warmup: Annotated[int | None, typer.Option(
        click_type=WHOLE, help="Epochs over which the KL weight rises linearly, per step, from 0 to --beta  "
             f"[default: {D.warmup}, none]")] = None,
    lr_schedule: Annotated[str | None, typer.Option(
        help="constant | cosine (decays to 0 over the run's total steps)  "
             f"[default: {D.lr_schedule}]")] = None,
    preset: Annotated[str | None, typer.Option(
        help=f"A named recipe ({' | '.join(PRESETS)}; config.PRESETS: benchmarks/likelihood_study.py measures "
             "each option); the options given beside it override its values")] = None,
    latent_dim: Annotated[int | None, typer.Option(click_type=WHOLE,
        help=f"Size of the code (the paper uses 1 and 2)  [default: {D.latent_dim}]")] = None,
    hidden: Annotated[str | None, typer.Option(
        help=f"Encoder hidden widths, decoder mirrors them  [default: {','.join(map(str, D.hidden))}]")] = None,
    epochs: Annotated[int | None, typer.Option(click_type=WHOLE,
        help=f"Total epochs; on --resume, continue up to this (never below what is done)  "
             f"[default: {D.epochs}]")] = None,
    batch_size: Annotated[int | None, typer.Option(
        click_type=WHOLE, help=f"Minibatch size  [default: {D.batch_size}]")] = None,
    lr: Annotated[float | None, typer.Option(click_type=NUMBER, help=f"Adam learning rate  [default: {D.lr}]")] = None,
    beta: Annotated[float | None, typer.Option(
        click_type=NUMBER, help=f"Weight on the regulariser (vae)  [default: {D.beta:g}]")] = None,
    binarize: Annotated[str | None, typer.Option(
        help="dynamic | none  [default: dynamic for the bernoulli likelihood, none for the others]")] = None,
    dataset: Annotated[str | None, typer.Option(
        help=f"mnist | fashion-mnist | kmnist | folder:PATH (image files) | npz:PATH (.npz with x, y; or .npy)  "
        f"[default: {D.dataset}]")] = None,
    arch: Annotated[str | None, typer.Option(help=f"mlp | conv  [default: {D.arch}]")] = None,
    likelihood: Annotated[str | None, typer.Option(
        help="p(x|z) per pixel: bernoulli (binary pixels) | continuous-bernoulli | gaussian (intensities in "
        f"[0, 1])  [default: {D.likelihood}]")] = None,
    channels: Annotated[int | None, typer.Option(click_type=WHOLE,
        help="folder/npz: 1 (grey) or 3 (colour)  [default: 1 if every image is grey, else 3]")] = None,
    image_size: Annotated[str | None, typer.Option(
        help="folder/npz: resize to HxW, e.g. 32x32  [default: the images' common size]")] = None,
    valid_fraction: Annotated[float | None, typer.Option(click_type=NUMBER,
        help=f"folder/npz: share held out for validation, drawn with --seed  [default: {D.valid_fraction}]")] = None,
    test_fraction: Annotated[float | None, typer.Option(click_type=NUMBER,
        help=f"folder/npz: share held out for test (unless train/ and test/ folders)  "
        f"[default: {D.test_fraction}]")] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="folder: skip files that are not images or are truncated (and say how many)")] = False,
    seed: Annotated[int | None, typer.Option(click_type=WHOLE, help=f"Random seed  [default: {D.seed}]")] = None,
    valid_size: Annotated[int | None, typer.Option(click_type=WHOLE,
        help=f"Images held out from the end of the training set for validation  [default: {D.valid_size}]")] = None,
    precision: Annotated[str | None, typer.Option(
        help="float32 | bfloat16: bfloat16 autocast for training's matmuls, where the CPU (AVX-512 BF16, AMX) or "
             f"GPU computes it natively  [default: {D.precision}]")] = None,
    data_dir: DataDir = None,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option(click_type=PATH, help="New run directory: new or empty  "
                                             "[required unless --resume]")] = None,
    resume: Annotated[Path | None, typer.Option(click_type=PATH, help="Continue the run in this directory")] = None,
) -> None:
    """Train a model; writes config, checkpoints and metrics.jsonl to the run directory."""
    from . import training

    given = {"model": model, "objective": objective, "latent_dim": latent_dim, "hidden": hidden,
             "batch_size": batch_size, "lr": lr, "beta": beta, "binarize": binarize, "dataset": dataset,
             "seed": seed, "valid_size": valid_size, "precision": precision, "arch": arch, "likelihood": likelihood,
             "channels": channels, "image_size": image_size, "valid_fraction": valid_fraction,
             "test_fraction": test_fraction, "skip_bad": skip_bad or None,
             "k": k, "prior": prior, "warmup": warmup, "lr_schedule": lr_schedule, "preset": preset}
    if resume is not None:
        fixed = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if fixed or out is not None:
            drop = ", ".join(fixed + (["--out"] if out else []))
            raise UsageProblem(f"--resume continues a run as configured; drop {drop} (other settings need a new "
                               "run: --out NEW)")
        result = training.resume(resume, epochs=epochs, data_dir=data_dir, device=device)
    else:
        if out is None:
            raise UsageProblem("give --out DIR for a new run (or --resume DIR to continue one)")
        if preset is not None and preset not in PRESETS:
            raise UsageProblem(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values = {**(PRESETS[preset] if preset else {}), **{n: v for n, v in given.items() if v is not None}}
        if preset is not None and objective is not None and objective != "iwae" and k is None:
            values.pop("k", None)  # the preset's k belongs to its iwae objective, which an explicit one replaces
        kind = values.setdefault("model", "vae")
        values.setdefault("objective", DEFAULT_OBJECTIVE.get(kind, "paper"))
        if k is not None and values["objective"] != "iwae":
            raise UsageProblem(f"--k is the number of importance samples of --objective iwae; this run trains on "
                               f"{values['objective']!r}")
        if hidden is not None:
            values["hidden"] = parse_hidden(hidden)
        if image_size is not None:
            values["image_size"] = parse_image_size(image_size)
        if epochs is not None:
            values["epochs"] = epochs
        check_options_apply(kind, [k for k, v in {**given, "epochs": epochs}.items() if v is not None])
        try:
            config = RunConfig(**values)
        except ConfigError as e:
            if preset is None:
                raise
            sets = " ".join(f"--{n.replace('_', '-')} {v}" for n, v in PRESETS[preset].items())
            raise UsageProblem(f"{e} (--preset {preset} sets {sets}; override what does not fit)") from None
        result = training.train(config, out, data_dir=data_dir, device=device)
    from .distributed import leave, started_by_torchrun

    leave()
    if started_by_torchrun() and int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 speaks for the run
    typer.echo(summary(result))


def summary(result) -> str:
    """One line on what a run holds: '<dir>: 3 of 10 epochs done, best valid loss ... at epoch 2'."""
    if result.target_epochs is None:  # PCA: fit in closed form
        return f"{result.run_dir}: fit, valid loss {result.best_valid_loss:.3f}"
    done = plural(result.epochs_done, "epoch")
    if result.epochs_done < result.target_epochs:
        done = f"{result.epochs_done} of {plural(result.target_epochs, 'epoch')} done"
    best = (f"best valid loss {result.best_valid_loss:.3f} at epoch {result.best_epoch}" if result.history
            else "nothing trained")
    return f"{result.run_dir}: {done}, {best}"


@app.command()
def evaluate(
    run_dir: RunDir,
    nll: Annotated[str | None, typer.Option(help="exact (quadrature, latent <= 2; seconds) | iwae (the "
                                            "importance-weighted bound) | exact,iwae: add test-set likelihoods, "
                                            "the ELBO split and the posterior gap")] = None,
    k: Annotated[int | None, typer.Option("--k", click_type=whole(1), help="Importance samples per image for "
                                          f"IWAE  [default: {IWAE_K}]")] = None,
    iwae_images: Annotated[int | None, typer.Option(click_type=whole(1), help="IWAE on the first N test images  "
                                                    "[default: all]")] = None,
    classifier: Annotated[bool, typer.Option("--classifier", help="Add classifier scores of interpolation "
                                             "midpoints and prior samples")] = False,
    precision: Annotated[str, typer.Option(
        help="float32 | bfloat16: the validation and test losses under bfloat16 autocast, where the CPU or GPU "
             "computes it natively; likelihoods (--nll) stay float32")] = "float32",
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Validation and test loss of the best checkpoint, per image in nats; saved to evaluation.json."""
    from .evaluate import evaluate_run
    from .likelihood import check_applicable, parse_estimators
    from .runfiles import load_config

    estimators = parse_estimators(nll) if nll is not None else ()
    if estimators:
        check_applicable(load_config(run_dir))
    if "iwae" not in estimators and (k is not None or iwae_images is not None):
        given = " and ".join(f for f, v in (("--k", k), ("--iwae-images", iwae_images)) if v is not None)
        raise UsageProblem(f"{given} only apply to IWAE; add --nll iwae (or --nll exact,iwae)")
    result = evaluate_run(run_dir, data_dir=data_dir, device=device, nll=estimators or None,
                          k=k if k is not None else IWAE_K, iwae_images=iwae_images, classifier=classifier,
                          precision=precision)
    pixels = result.get("pixel_likelihood")
    typer.echo(f"{run_dir} (best epoch {result['epoch']}), per image"
               + (f"; nats under the {pixels['description']} likelihood:" if pixels else ":"))
    typer.echo(f"  {'split':6} {'loss':>10} {'recon':>10} {'regul.':>10} {'sq. error':>10}"
               + (f" {'bits/dim':>10}" if pixels else ""))
    for split in ("valid", "test"):
        r = result[split]
        typer.echo(f"  {split:6} {r['loss']:10.3f} {r['reconstruction']:10.3f} {r['regularizer']:10.3f} "
                   f"{r['squared_error']:10.3f}" + (f" {r['bits_per_dim']:10.4f}" if pixels else ""))
    if estimators:
        from .likelihood import summary_lines

        for line in summary_lines(result["likelihood"]):
            typer.echo(f"  {line}")
    if classifier:
        from .classifier import summary_lines as realism_lines

        for line in realism_lines(result["realism"]):
            typer.echo(f"  {line}")


@app.command()
def sample(
    run_dir: RunDir,
    n: Annotated[int, typer.Option("-n", click_type=whole(1, 10000), help="Number of images (1 to 10000)")] = 64,
    output: Annotated[Path, typer.Option("-o", "--output", click_type=PATH, help="Image file to write: .png, "
                                         ".jpg, .pdf or .svg (the suffix picks the format)")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(click_type=whole(-(2**63), 2**64 - 1), help="Seed for the codes")] = 0,
    device: Device = "auto",
) -> None:
    """Decode codes drawn from the run's prior (N(0, I) unless learned) and save them as an image grid."""
    from .checkpoint import load_trained
    from .figures import check_output_file, image_grid
    from .models import sample_images

    check_output_file(output)  # before loading anything
    model, config, _ = load_trained(run_dir, device)
    image_grid(sample_images(model, n, seed=seed), output, nrow=min(n, 8 if n <= 64 else 16),
               shape=config.image_shape or (1, 28, 28))
    typer.echo(f"wrote {plural(n, 'sample')} to {output}")


@app.command(epilog="Examples: vaelab reproduce --quick;  vaelab reproduce --seeds 5 --epochs 200 --out report/")
def reproduce(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny budget (about a minute): 1 seed, 3 epochs, "
                                        "the first 10000 training images")] = False,
    seeds: Annotated[int | None, typer.Option(click_type=WHOLE,
        help=f"Seeds per model and latent dim  [default: {DEFAULT_SEEDS}; quick: {QUICK_SEEDS}]")] = None,
    epochs: Annotated[int | None, typer.Option(click_type=WHOLE,
        help=f"Epochs per run  [default: {DEFAULT_EPOCHS}; quick: {QUICK_EPOCHS}]")] = None,
    latent_dims: Annotated[str, typer.Option(help="Latent dimensions, comma-separated  "
                                             f"[default: {','.join(map(str, LATENT_DIMS))}]",
                                             show_default=False)] = ",".join(map(str, LATENT_DIMS)),
    out: Annotated[Path, typer.Option(click_type=PATH, help="Report directory; runs go to OUT/runs/  "
                                      "[default: report]", show_default=False)] = Path("report"),
    force: Annotated[bool, typer.Option("--force", help="Retrain runs that already exist")] = False,
    iwae_k: Annotated[int | None, typer.Option(click_type=WHOLE, help="Importance samples per image for IWAE and "
                                               "the ELBO  "
                                               f"[default: {IWAE_K}; quick: {QUICK_IWAE_K}]")] = None,
    iwae_images: Annotated[int | None, typer.Option(click_type=WHOLE, help="IWAE on the first N test images  "
                                                    f"[default: {IWAE_IMAGES}; quick: {QUICK_IWAE_IMAGES}]")] = None,
    recipe: Annotated[bool, typer.Option(
        "--recipe", help="Also train the likelihood recipe (--preset z1-best / z2-best, 300 epochs: about 20 "
        "minutes per seed and latent dimension on 2 cores, so about 2 hours at the default seeds and latent "
        "dimensions) for each latent dimension that has one, and put it in the tables next to the published "
        "numbers")] = False,
    workers: Annotated[int | None, typer.Option(
        click_type=whole(1), help="Train the runs in N local worker processes, each with its share of the "
        "cores (1: one after another in this process)  [default: 2 when training on a CPU with 2 or more "
        "cores; 1 on a GPU or a single core]",
        show_default=False)] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Train the runs as Ray tasks on the Ray cluster at ADDRESS; without "
        "ADDRESS, on a Ray started on this machine (pip install 'vaelab[ray]')")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="mnist | fashion-mnist | kmnist | folder:PATH | npz:PATH (your own images: no classifier scores)  "
        f"[default: {D.dataset}]")] = None,
    arch: Annotated[str | None, typer.Option(help=f"mlp | conv  [default: {D.arch}]")] = None,
    likelihood: Annotated[str | None, typer.Option(
        help=f"bernoulli | continuous-bernoulli | gaussian  [default: {D.likelihood}]")] = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """The paper's experiment end to end: PCA, autoencoder and VAEs for latent 1 and 2, several seeds;
    results table, figures and an HTML report in OUT. Finished runs are reused unless --force."""
    from .reproduce import Executor, default_executor, make_settings, parse_latent_dims
    from .reproduce import reproduce as run_reproduce

    if ray is not None and workers is not None:
        raise UsageProblem("--workers and --ray are two ways to run the same runs: choose one")
    executor = (Executor("ray", address=None if ray == RAY_HERE else ray) if ray is not None
                else default_executor(device) if workers is None
                else Executor("processes", workers=workers) if workers > 1 else Executor())
    settings = make_settings(quick=quick, epochs=epochs, seeds=seeds, latent_dims=parse_latent_dims(latent_dims),
                             iwae_k=iwae_k, iwae_images=iwae_images, recipe=recipe)
    choices = {"dataset": dataset, "arch": arch, "likelihood": likelihood}
    base = RunConfig(**{k: v for k, v in choices.items() if v is not None})
    index = run_reproduce(out, settings=settings, force=force, data_dir=data_dir, device=device, base=base,
                          executor=executor)
    typer.echo(f"wrote {index} (table: {out / 'results.md'})")


@app.command(epilog="Example: vaelab explore runs/ae-z2 runs/vae-z2 -o explorer.html")
def explore(
    run_dirs: Annotated[list[Path], typer.Argument(
        click_type=PATH, help="Autoencoder and VAE run directories of one dataset and "
                                                   "latent dimension, shown side by side")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", click_type=PATH, help="HTML file to write  "
                                                "[default: explorer.html; with --serve: none]",
                                                show_default=False)] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the page on 127.0.0.1 (a free port) until "
                                        "Ctrl-C")] = False,
    points: Annotated[int | None, typer.Option(click_type=whole(1), help="Test images whose codes the planes "
                                               "show (the first N)  "
                                               "[default: 3000]", show_default=False)] = None,
    precision: Annotated[str, typer.Option(help="Embedded weights: auto (float32 unless the page would exceed "
                                           "4 MiB, then float16) | float32 | float16")] = "auto",
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Write one self-contained HTML page (works offline) that decodes codes live as the pointer moves."""
    from . import explorer

    if output is not None:
        explorer.check_output(output)
    items = explorer.load_runs(run_dirs, data_dir=data_dir, device=device,
                               **({"n_points": points} if points is not None else {}))
    page = explorer.build_page(items, precision)
    if output is not None or not serve:
        path = explorer.write_page(output or Path("explorer.html"), page)
        typer.echo(f"wrote {path} ({len(page.encode()) / 2**20:.2f} MiB)")
    if serve:
        explorer.serve(page, typer.echo)


@app.command()
def version() -> None:
    """Print the vaelab version."""
    typer.echo(json.dumps({"vaelab": __version__}))


RAY_HERE = "local"  # what a bare `--ray` stands for: start Ray on this machine


def optional_values(argv: list[str]) -> list[str]:
    """`--ray` may come without its ADDRESS (click options take a value): supply RAY_HERE then."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(RAY_HERE)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, mapping every known error to one line on stderr."""
    try:
        code = app(args=optional_values(sys.argv[1:] if argv is None else argv), prog_name="vaelab",
                   standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a returned 130
            _fail("interrupted", 130)
        if code:
            sys.exit(code)
    except click.exceptions.NoArgsIsHelpError as e:
        print(e.format_message(), file=sys.stderr)
        sys.exit(USAGE)
    except click.UsageError as e:
        _fail(e.format_message(), USAGE)
    except click.Abort:
        _fail("interrupted", 130)
    except (UsageProblem, ConfigError, CheckpointError, DataNotFoundError, ValueError) as e:
        _fail(str(e), USAGE)
    except OSError as e:  # e.g. disk full: "PATH: No space left on device", not "[Errno 28] ..."
        _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e), FAILURE)
    except (DataError, NonFiniteLossError, DistributedError) as e:
        _fail(str(e), FAILURE)
    except RuntimeError as e:
        from .reproduce import ReproduceFailed  # here: the module is heavy and only `reproduce` raises it

        if not isinstance(e, ReproduceFailed):
            raise
        _fail(str(e), FAILURE)
    except TrainingInterrupted as e:  # Ctrl-C during training: a checkpoint was saved
        print(f"vaelab: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    print(f"vaelab: error: {message}", file=sys.stderr)
    _end_failed_rank(code)
    sys.exit(code)


def _end_failed_rank(code: int) -> None:
    """Under torchrun, a rank that failed exits at once, with `code`: its process group torn down at
    interpreter exit, after another rank has gone, can abort the process instead (SIGABRT; seen once in
    tests/test_distributed.py). Nothing is left to save: the error is handled and reported."""
    dist = sys.modules.get("torch.distributed")  # never imported: no process group
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
