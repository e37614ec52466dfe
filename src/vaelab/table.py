"""The results table: one row per (model, objective, latent dim) aggregating seeds, its columns
declared once (`COLUMNS`, looked up by key), written as results.md / results.csv / results.json."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .runfiles import EVALUATION_FILE, atomic_write, load_config, read_json, read_metrics, write_json

DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "kmnist": "KMNIST"}
MODEL_LABELS = {("pca", "squared-error"): "PCA", ("autoencoder", "reconstruction"): "autoencoder",
                ("vae", "paper"): "VAE (paper)", ("vae", "elbo"): "VAE (ELBO)"}


@dataclass
class RunRecord:
    """What the table needs from one run directory."""

    name: str
    config: RunConfig
    history: list[dict]  # metrics.jsonl
    evaluation: dict  # evaluation.json

    @property
    def label(self) -> str:
        if self.config.preset:  # a named recipe: its options are the preset's, not just the objective
            return f"VAE ({self.config.preset} recipe)"
        return MODEL_LABELS.get((self.config.model, self.config.objective),
                                f"{self.config.model} ({self.config.objective})")


def load_record(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    return RunRecord(run_dir.name, load_config(run_dir), read_metrics(run_dir), read_json(run_dir / EVALUATION_FILE))


def best_validation(record: RunRecord) -> tuple[float, int]:
    """(lowest validation loss, its epoch) over the run's epochs, from metrics.jsonl (first epoch on ties)."""
    best = min(record.history, key=lambda h: h["valid_loss"])
    return best["valid_loss"], best["epoch"]


@dataclass(frozen=True)
class Column:
    key: str  # name in results.csv / results.json
    header: str  # table header
    value: Callable[[RunRecord], float | None]  # one run's number; None where it does not apply
    description: str  # what it is, with units (shown under the table)
    decimals: int = 2
    integer: bool = False  # shown as the range over seeds (an epoch), not mean ± std
    group: str = ""  # "" the main table; "likelihood" / "classifier": their own tables in the report


def _bernoulli(get: Callable[[RunRecord], float]) -> Callable[[RunRecord], float | None]:
    """Nats columns: PCA has no Bernoulli likelihood (it decodes to pixel values), so it gets none."""
    return lambda r: None if r.config.objective == "squared-error" else get(r)


def _test(term: str) -> Callable[[RunRecord], float]:
    return lambda r: r.evaluation["test"][term]


def _evaluated(section: str, *path: str) -> Callable[[RunRecord], float | None]:
    """A number from evaluation.json[section][path...] (evaluate_run's nll / classifier options); None
    where the run has none or its model defines no likelihood (PCA, autoencoder)."""
    def get(r: RunRecord) -> float | None:
        node = r.evaluation.get(section)
        if not node or node.get("applicable") is False:
            return None
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node
    return get


def _lik(*path: str) -> Callable[[RunRecord], float | None]:
    return _evaluated("likelihood", *path)


def _clf(*path: str) -> Callable[[RunRecord], float | None]:
    return _evaluated("realism", *path)


# The table's columns, in order. Further columns (e.g. from new keys of evaluation.json) are added here.
COLUMNS: list[Column] = [
    Column("min_valid_loss", "min. validation loss", _bernoulli(lambda r: best_validation(r)[0]),
           "the paper's number: the lowest validation loss of the run's own objective over its epochs "
           "(metrics.jsonl), nats per image"),
    Column("best_epoch", "at epoch", _bernoulli(lambda r: best_validation(r)[1]),
           "the epoch of that minimum (range over seeds); its weights are the run's model.safetensors",
           integer=True),
    Column("test_loss", "test loss", _bernoulli(_test("loss")),
           "the objective on the test set with those weights (evaluation.json), nats per image"),
    Column("test_reconstruction", "test reconstruction", _bernoulli(_test("reconstruction")),
           "its Bernoulli reconstruction term −log p(x | c), nats per image (VAEs: c drawn with their noise)"),
    Column("test_regularizer", "test regulariser", _bernoulli(_test("regularizer")),
           "its regulariser: eq. (3)'s penalty (paper) or KL(q ‖ p(z)) (ELBO, IWAE: N(0, I) in closed form, a "
           "learned prior sampled), nats per image"),
    Column("test_squared_error", "test squared error", _test("squared_error"),
           "Σ over pixels of (mean decode − x)², per test image: the one metric every model, PCA "
           "included, is scored on"),
    # likelihoods (vaelab.likelihood): VAEs only, each with its own q(z|x)
    Column("exact_nll", "exact NLL", _lik("exact", "nll"),
           "−log p(x) = −log ∫ p(x|z) p(z) dz on the test images by quadrature over the latent space, refined "
           "until it moves < 0.01 nats per image, nats per image (latent dimension ≤ 2)", group="likelihood"),
    Column("exact_nll_iwae_images", "NLL†", _lik("posterior_gap", "exact_nll_on_these_images"),
           "the same exact NLL on the IWAE images only, nats per image", group="likelihood"),
    Column("iwae", "IWAE†", _lik("iwae", "nll"),
           "the importance-weighted bound −log (1/k) Σ p(x, z_i)/q(z_i|x) (Burda et al. 2016), nats per "
           "image: never below the NLL", group="likelihood"),
    Column("neg_elbo", "−ELBO†", _lik("elbo", "neg_elbo"),
           "the negative ELBO with the same q and samples, nats per image: reconstruction + KL",
           group="likelihood"),
    Column("elbo_reconstruction", "reconstruction†", _lik("elbo", "reconstruction"),
           "E_q[−log p(x|z)] from those samples, nats per image", group="likelihood"),
    Column("elbo_kl", "KL†", _lik("elbo", "kl"),
           "KL(q(z|x) ‖ p(z)), nats per image: in closed form for N(0, I), from those samples for a learned "
           "prior", group="likelihood"),
    Column("posterior_gap", "−ELBO − NLL†", _lik("posterior_gap", "neg_elbo_minus_nll"),
           "the posterior gap KL(q(z|x) ‖ p(z|x)): what the encoder's q misses of the true posterior, nats "
           "per image", group="likelihood"),
    Column("active_units", "active units", _lik("active_units", "count"),
           "latent units u with Var_x E_q[z_u|x] > 0.01 over the test set (Burda et al. 2016), range over "
           "seeds", integer=True, group="likelihood"),
    # classifier scores (vaelab.classifier): every model
    Column("midpoint_confidence", "midpoint confidence", _clf("midpoints", "confidence"),
           "mean top-class probability the MNIST classifier gives decodes of (α1 + α2)/2 between codes of "
           "test digits of different classes", decimals=3, group="classifier"),
    Column("midpoint_entropy", "midpoint entropy", _clf("midpoints", "entropy"),
           "mean entropy of its class probabilities for those midpoints, nats (0: certain; log 10 = 2.30: "
           "uniform)", decimals=3, group="classifier"),
    Column("midpoint_frechet", "midpoint MNIST FD", _clf("midpoints", "frechet"),
           "Fréchet distance between the classifier's 128 penultimate features of the midpoints and of the "
           "real test images (the FID formula on an MNIST classifier: not comparable to Inception FID)",
           group="classifier"),
    Column("sample_confidence", "sample confidence", _clf("samples", "confidence"),
           "mean top-class probability for decodes of random codes (N(0, I); PCA: its code variances)",
           decimals=3, group="classifier"),
    Column("sample_entropy", "sample entropy", _clf("samples", "entropy"),
           "mean entropy for those decodes, nats", decimals=3, group="classifier"),
    Column("sample_frechet", "sample MNIST FD", _clf("samples", "frechet"),
           "MNIST Fréchet distance of those decodes to the real test images", group="classifier"),
]


# --- the table -----------------------------------------------------------------------------------

def results_rows(records: list[RunRecord], columns: list[Column] = COLUMNS) -> list[dict]:
    """One row per (model, objective, latent dim, preset), in first-seen order, aggregating its seeds.

    Each cell: {"mean", "std" (sample std; None for one seed), "values" (per seed)}, or None where
    the column does not apply.
    """
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.config.model, r.config.objective, r.config.latent_dim, r.config.preset), []).append(r)
    rows = []
    for (model, objective, latent_dim, preset), group in groups.items():
        group = sorted(group, key=lambda r: r.config.seed)
        cells = {}
        for col in columns:
            values = [col.value(r) for r in group]
            if any(v is None for v in values):
                cells[col.key] = None
                continue
            cells[col.key] = {"mean": statistics.fmean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else None,
                              "values": values}
        rows.append({"model": model, "objective": objective, "preset": preset, "label": group[0].label,
                     "latent_dim": latent_dim, "epochs": max(r.config.epochs for r in group),
                     "seeds": [r.config.seed for r in group], "runs": [r.name for r in group], "cells": cells})
    return rows


def format_cell(col: Column, cell: dict | None) -> str:
    if cell is None:
        return "—"
    if col.integer:
        lo, hi = int(min(cell["values"])), int(max(cell["values"]))
        return str(lo) if lo == hi else f"{lo}–{hi}"
    text = f"{cell['mean']:.{col.decimals}f}"
    return text if cell["std"] is None else f"{text} ± {cell['std']:.{col.decimals}f}"


def table_cells(rows: list[dict], columns: list[Column] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    header = ["model", "latent dim", *[c.header for c in columns]]
    body = [[row["label"], str(row["latent_dim"]), *[format_cell(c, row["cells"][c.key]) for c in columns]]
            for row in rows]
    return header, body


def write_results(out: Path, rows: list[dict], columns: list[Column] = COLUMNS) -> None:
    """results.md, results.csv and results.json in `out` (deterministic: no timings in them)."""
    header, body = table_cells(rows, columns)
    summary, notes = table_notes(rows, columns)
    text = markdown_table(header, body) + "\n" + summary + "\n\n" + "".join(f"- {n}\n" for n in notes)
    atomic_write(out / "results.md", text.encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "objective", "latent_dim", "n_seeds",
                     *[f"{c.key}_{stat}" for c in columns for stat in ("mean", "std")], "preset"])
    for row in rows:
        stats = []
        for c in columns:
            cell = row["cells"][c.key]
            if cell is None:
                stats += ["", ""]
            else:
                stats += [repr(cell["mean"]), "" if cell["std"] is None else repr(cell["std"])]
        writer.writerow([row["model"], row["objective"], row["latent_dim"], len(row["seeds"]), *stats,
                         row["preset"] or ""])
    atomic_write(out / "results.csv", buffer.getvalue().encode())
    write_json(out / "results.json", {
        "columns": [{"key": c.key, "header": c.header, "description": c.description} for c in columns],
        "rows": rows,
    })


def table_notes(rows: list[dict], columns: list[Column] = COLUMNS) -> tuple[str, list[str]]:
    """(a sentence on how rows aggregate seeds, one line per column saying what it is)."""
    n = sorted({len(r["seeds"]) for r in rows})
    if max(n) > 1:
        spread = f"Mean over {' or '.join(map(str, n))} seeds per row; ± is the sample standard deviation over seeds."
    else:
        spread = "One seed per row, so no spread over seeds is given."
    summary = (f"{spread} —: does not apply (PCA is fit in closed form to squared error and has no Bernoulli "
               "likelihood).")
    return summary, [f"**{c.header}**: {c.description}." for c in columns]


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table: the first two columns left-aligned (labels), the rest right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"




def column(key: str, columns: list[Column] = COLUMNS) -> Column:
    """The column named `key` (KeyError naming the known keys otherwise)."""
    for c in columns:
        if c.key == key:
            return c
    raise KeyError(f"no column {key!r}; known: {', '.join(c.key for c in columns)}")
