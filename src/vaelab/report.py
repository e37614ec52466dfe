"""The report: index.md and a self-contained index.html (figures embedded) built from blocks:
the setup, the results tables (table.py), the figures and the discussion (discussion.py)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import PRESETS, RunConfig
from .discussion import (
    anchor_paragraph,
    discussion,
    likelihood_paragraphs,
    measurement_lines,
    measurement_summary,
    published_comparison,
)
from .figures import FIGURES, figure_number
from .objectives import LIKELIHOOD_NAMES
from .runfiles import atomic_write
from .table import (
    COLUMNS,
    DATASET_NAMES,
    RunRecord,
    markdown_table,
    results_rows,
    table_cells,
    table_notes,
    write_results,
)


@dataclass
class Setup:
    """Everything the report's setup section states, gathered by `vaelab.reproduce`."""

    command: str
    version: str
    epochs: int
    seeds: tuple[int, ...]
    latent_dims: tuple[int, ...]
    train_images: int | None  # None: whole training split; N: its first N images (--quick)
    split_sizes: tuple[int, int, int]  # train, valid, test images
    base: RunConfig
    machine: str
    runs_reused: int
    runs_total: int
    train_seconds_total: float  # summed over every run's timing.jsonl
    phase_seconds: dict[str, float]
    wall_seconds: float
    figure_seed: int
    interpolation_classes: tuple[int, int] | None  # None: your own images without labels (the first two)
    code_stats: dict = field(default_factory=dict)
    explorer: str | None = None  # the latent explorer page, relative to the report (None: not written)
    explorer_runs: tuple[str, ...] = ()  # labels of the runs it shows


def captions(setup: Setup) -> dict[str, str]:
    s, classes = setup.figure_seed, setup.interpolation_classes
    if classes and setup.base.classes:  # your own images in named classes
        pair = f"the first test images of class {setup.base.classes[classes[0]]} and {setup.base.classes[classes[1]]}"
    elif classes:
        pair = f"the first test digits of class {classes[0]} and {classes[1]}"
    else:
        pair = "the first two test images"
    h = ", ".join(map(str, setup.base.hidden))
    return {
        "structure": f"The VAE of eq. (2)-(3) as trained here for latent dimension 2, drawn from its config: "
                     f"encoder {setup.base.n_pixels} → {h} → (m, σ); noise e ~ N(0, 1); c = m + exp(σ)·e; "
                     f"decoder back to {setup.base.n_pixels} Bernoulli logits (the paper's Figure 1).",
        "curves": "Training (dashed) and validation (solid) loss per epoch, nats per image, one line per seed. "
                  "PCA is fit in closed form and has no curve. The training loss is averaged over the epoch "
                  "while the weights change; the validation loss is measured after it.",
        "reconstructions": f"Mean reconstructions of the first test digit of each class (seed {s}): the test "
                           "digits (binarized), then each model for latent dimension 1 and 2.",
        "samples": f"Decodes of random codes (seed {s}): codes drawn from N(0, I), the VAEs' prior, for the "
                   "autoencoder and the VAEs; from N(0, diag(variance of its codes)) for PCA. The autoencoder "
                   "has no prior: the same N(0, I) draw shows what its decoder makes of codes it was not "
                   "trained on.",
        "latent": f"The test set in latent space (seed {s}), coloured by digit: the code (m for the VAEs) as a "
                  "per-digit strip for latent dimension 1 and as a scatter for latent dimension 2.",
        "manifold": f"The learned manifold of the VAEs (seed {s}): decodes at the Gaussian quantiles of an even "
                    "grid in (0, 1) (the inverse normal CDF, as in Kingma & Welling), a grid for latent "
                    "dimension 2 and a strip for latent dimension 1. Axis ticks give the code values.",
        "interpolation": f"The paper's full-moon / half-moon argument with digits (seed {s}): codes α1 and α2 of "
                         f"{pair}, decodes along the line between them, "
                         "the midpoint (α1 + α2)/2 framed in red; one row per model and latent dimension.",
    }


def setup_lines(setup: Setup) -> list[str]:
    c = setup.base
    n_train, n_valid, n_test = setup.split_sizes
    subset = ""
    if setup.train_images is not None:
        subset = (f" **--quick:** the runs trained on the first {setup.train_images} of these {n_train} "
                  "training images only; the validation and test sets are unchanged.")
    pixels = ("dynamic binarization: each training image is a fresh Bernoulli draw from its intensities every "
              f"epoch; the validation and test images are binarized once with seed {c.eval_seed}"
              if c.binarize == "dynamic" else "grayscale intensities in [0, 1] (no binarization)")
    hidden = " → ".join(map(str, c.hidden))
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in setup.phase_seconds.items())
    data = (f"Data: {DATASET_NAMES.get(c.dataset, c.dataset)}; the official training set split into {n_train} "
            f"training images and its last {n_valid} as the validation set; the official {n_test} test "
            f"images.{subset}")
    if c.is_source:  # your own images: what they are and how they were split
        shape = "x".join(map(str, c.image_shape))
        kinds = f", {len(c.classes)} classes ({', '.join(c.classes)})" if c.classes else ""
        data = (f"Data: your own images, `{c.dataset}` ({shape} C x H x W{kinds}): {n_train} training, "
                f"{n_valid} validation and {n_test} test images (validation fraction {c.valid_fraction:g}, test "
                f"fraction {c.test_fraction:g}, drawn with each run's seed unless the source has its own "
                f"split).{subset}")
    if c.likelihood != "bernoulli":
        pixels = f"{pixels}; p(x|z): the {LIKELIHOOD_NAMES[c.likelihood]}, a density (its nats can be negative)"
    architecture = (f"Architecture (all neural models): encoder MLP {c.n_pixels} → {hidden} → code (ReLU between "
                    f"layers; the VAE outputs m and σ), decoder mirrored back to {c.n_pixels} Bernoulli logits. "
                    "PCA: the top principal directions of one binarized draw of the training images, in closed "
                    "form.")
    if c.arch == "conv" or c.likelihood != "bernoulli":
        trunk = (f"convolutional encoder on {'x'.join(map(str, c.image_shape))} images (two 4x4 stride-2 "
                 f"convolutions, a dense layer of {c.hidden[-1]}) → code, transposed convolutions back"
                 if c.arch == "conv" else f"encoder MLP {c.n_pixels} → {hidden} → code, decoder mirrored back")
        architecture = (f"Architecture (all neural models): {trunk} to {c.n_pixels} logits of the "
                        f"{c.likelihood} likelihood (ReLU between layers; the VAE outputs m and σ). PCA: the top "
                        "principal directions of the training images, in closed form.")
    return [
        f"Command: `{setup.command}` (vaelab {setup.version}).",
        data,
        f"Pixel model: {pixels}.",
        architecture,
        "Objectives: autoencoder, Bernoulli reconstruction; VAE (paper), eq. (2)-(3) exactly as written; "
        "VAE (ELBO), the negative ELBO of Kingma & Welling; PCA, squared error.",
        f"Optimizer: Adam, learning rate {c.lr:g}, batch size {c.batch_size}, {setup.epochs} epochs per run; "
        "each run keeps the weights of its best validation epoch.",
        f"Latent dimensions {', '.join(map(str, setup.latent_dims))}; seeds {', '.join(map(str, setup.seeds))} "
        "(each seeds weight initialisation, shuffling, binarization and the VAE noise).",
        f"Machine: {setup.machine}.",
        f"Wall time of this command: {setup.wall_seconds:.0f} s ({phases}); {setup.runs_reused} of "
        f"{setup.runs_total} runs were reused from an earlier invocation. Training time of all runs, from "
        f"their timing.jsonl: {setup.train_seconds_total:.0f} s.",
    ]


def recipe_lines(rows: list[dict]) -> list[str]:
    """A setup line per named recipe in the table: what its rows are (`vaelab reproduce --recipe`)."""
    out = []
    for name in dict.fromkeys(r["preset"] for r in rows if r.get("preset")):
        options = ", ".join(f"{k} {v}" for k, v in PRESETS[name].items() if k not in ("model", "latent_dim"))
        epochs = sorted({r["epochs"] for r in rows if r.get("preset") == name})
        out.append(f"VAE ({name} recipe): `vaelab train --preset {name}`, the likelihood recipe: {options}; here "
                   f"{' or '.join(map(str, epochs))} epochs. The architecture and optimizer as above; it is in "
                   "the tables, not in the figures.")
    return out


def report_blocks(rows: list[dict], setup: Setup, figure_paths: dict[str, Path],
                  measurement: dict | None = None) -> list[tuple]:
    """The report as blocks: ("h1" | "h2" | "p", text), ("ul", [text]), ("table", header, body),
    ("figure", number, path, caption). `measurement`: `measurement_summary` of the runs."""
    main = [c for c in COLUMNS if not c.group]
    header, body = table_cells(rows, main)
    summary, notes = table_notes(rows, main)
    blocks: list[tuple] = [
        ("h1", "vaelab: PCA → autoencoder → VAE on MNIST, measured"),
        ("p", "The Results section of *Derivation and Discussion of Variational Autoencoder Model* with real "
              "numbers. Every number below was produced by the command in the setup, from the run "
              "directories under `runs/`; `vaelab evaluate runs/<name>` recomputes any of them."),
        ("h2", "Setup"),
        ("ul", setup_lines(setup) + recipe_lines(rows) + measurement_lines(measurement or {})),
        ("h2", "Results"),
        ("table", header, body),
        ("p", summary),
        ("ul", notes),
    ]
    titles = {"likelihood": "Likelihoods and posterior diagnostics (VAEs)",
              "classifier": "Are midpoints and samples digits? Classifier scores"}
    for group, title in titles.items():
        cols = [c for c in COLUMNS if c.group == group]
        shown = [r for r in rows if any(r["cells"][c.key] is not None for c in cols)]
        if shown:
            blocks += [("h2", title), ("table", *table_cells(shown, cols))]
            if group == "likelihood":
                if measurement and "iwae_k" in measurement:
                    blocks.append(("p", f"†: on the first {measurement['iwae_images']} test images, where IWAE "
                                        f"and the ELBO use k = {measurement['iwae_k']} samples per image; exact "
                                        f"NLL: on {measurement.get('exact_images', 'all')} test images."))
            blocks.append(("ul", table_notes(shown, cols)[1]))
            if group == "likelihood":  # then the published numbers, under the notes that explain the columns
                anchor = anchor_paragraph(shown, epochs=setup.epochs, eval_seed=setup.base.eval_seed)
                published = published_comparison(shown, measurement or {})
                if anchor and published and (setup.base.dataset, setup.base.binarize) == ("mnist", "dynamic"):
                    blocks += [("table", *published), ("p", anchor)]
    blocks += [
        ("p", "All tables: `results.md`, `results.csv`, `results.json` (per-seed values)."),
        ("h2", "Figures"),
    ]
    caption = captions(setup)
    for name in FIGURES:
        if name in figure_paths:
            blocks.append(("figure", figure_number(name), figure_paths[name], caption[name]))
    if setup.explorer:
        blocks += [("h2", "Latent explorer"), ("p", explorer_paragraph(setup))]
    blocks.append(("h2", "Discussion"))
    blocks += [("p", text) for text in discussion(rows, epochs=setup.epochs, code_stats=setup.code_stats)]
    blocks += [("p", text) for text in likelihood_paragraphs(rows)]
    return blocks


def explorer_paragraph(setup: Setup) -> str:
    runs = ", ".join(setup.explorer_runs)
    return (f"[{setup.explorer}]({setup.explorer}) (one self-contained page, works offline): the latent-2 test "
            f"codes of the {runs} runs (seed {setup.figure_seed}) side by side on planes with the prior's 1, 2 "
            "and 3 σ circles; moving the pointer decodes that code live in every run, clicking pins it, and two "
            "picked test images give the straight path between their codes, decoded per run. Also "
            "`vaelab explore RUN [RUN ...]`.")


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)  # [text](relative link)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def to_markdown(blocks: list[tuple], out: Path) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            parts.append(f"# {block[1]}\n")
        elif kind == "h2":
            parts.append(f"## {block[1]}\n")
        elif kind == "p":
            parts.append(block[1] + "\n")
        elif kind == "ul":
            parts.append("".join(f"- {item}\n" for item in block[1]))
        elif kind == "table":
            parts.append(markdown_table(block[1], block[2]))
        elif kind == "figure":
            _, number, path, text = block
            rel = Path(path).relative_to(out).as_posix()
            parts.append(f"![Figure {number}]({rel})\n\n*Figure {number}.* {text}\n")
    return "\n".join(parts)


STYLE = """
body { font-family: Georgia, 'Times New Roman', serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
       line-height: 1.5; color: #222; }
h1, h2 { font-family: Helvetica, Arial, sans-serif; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; display: block; overflow-x: auto; }
th, td { border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
figure { margin: 2em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.92em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def to_html(blocks: list[tuple]) -> str:
    """A self-contained HTML page: figures embedded as base64 PNG data URIs."""
    title = next(b[1] for b in blocks if b[0] == "h1")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "figure":
            _, number, path, text = block
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="Figure {number}">'
                         f"<figcaption><strong>Figure {number}.</strong> {_inline_html(text)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: str | Path, records: list[RunRecord], setup: Setup, figure_paths: dict[str, Path]) -> Path:
    """results.{md,csv,json}, index.md and index.html in `out`; returns the path of index.html."""
    out = Path(out)
    rows = results_rows(records)
    write_results(out, rows)
    blocks = report_blocks(rows, setup, figure_paths, measurement_summary(records))
    atomic_write(out / "index.md", to_markdown(blocks, out).encode())
    atomic_write(out / "index.html", to_html(blocks).encode())
    return out / "index.html"
