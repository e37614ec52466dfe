"""The results table and the report, built from saved run directories alone.

`COLUMNS` is the one place that says which numbers the table holds and where each comes from
(`metrics.jsonl` or `evaluation.json` of a run); rows aggregate runs over seeds (mean ± sample std).
The report (index.md and a self-contained index.html) is a list of blocks rendered to both formats;
its discussion is written by code from the measured numbers.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import atomic_write, load_config, read_json, read_metrics, write_json
from .config import RunConfig
from .figures import FIGURES

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
        return MODEL_LABELS.get((self.config.model, self.config.objective),
                                f"{self.config.model} ({self.config.objective})")


def load_record(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    return RunRecord(run_dir.name, load_config(run_dir), read_metrics(run_dir), read_json(run_dir / "evaluation.json"))


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
           "its regulariser: eq. (3)'s penalty (paper) or KL(q ‖ N(0, I)) (ELBO), nats per image"),
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
           "KL(q(z|x) ‖ N(0, I)) in closed form, nats per image", group="likelihood"),
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
    """One row per (model, objective, latent dim), in first-seen order, aggregating its seeds.

    Each cell: {"mean", "std" (sample std; None for one seed), "values" (per seed)}, or None where
    the column does not apply.
    """
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.config.model, r.config.objective, r.config.latent_dim), []).append(r)
    rows = []
    for (model, objective, latent_dim), group in groups.items():
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
        rows.append({"model": model, "objective": objective, "label": group[0].label, "latent_dim": latent_dim,
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
    text = _markdown_table(header, body) + "\n" + summary + "\n\n" + "".join(f"- {n}\n" for n in notes)
    atomic_write(out / "results.md", text.encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "objective", "latent_dim", "n_seeds",
                     *[f"{c.key}_{stat}" for c in columns for stat in ("mean", "std")]])
    for row in rows:
        stats = []
        for c in columns:
            cell = row["cells"][c.key]
            if cell is None:
                stats += ["", ""]
            else:
                stats += [repr(cell["mean"]), "" if cell["std"] is None else repr(cell["std"])]
        writer.writerow([row["model"], row["objective"], row["latent_dim"], len(row["seeds"]), *stats])
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


# --- the discussion, from the numbers ------------------------------------------------------------

def _find(rows: list[dict], model: str, objective: str, dim: int) -> dict | None:
    return next((r for r in rows if (r["model"], r["objective"], r["latent_dim"]) == (model, objective, dim)), None)


def _num(cell: dict, decimals: int = 2) -> str:
    return f"{cell['mean']:.{decimals}f}" + ("" if cell["std"] is None else f" ± {cell['std']:.{decimals}f}")


def _resolved(a: dict, b: dict) -> bool | None:
    """True if two cells' means differ by more than the sum of their seed spreads; None with one seed."""
    if a["std"] is None or b["std"] is None:
        return None
    return abs(a["mean"] - b["mean"]) > a["std"] + b["std"]


def discussion(rows: list[dict], *, epochs: int, code_stats: dict | None = None) -> list[str]:
    """Paragraphs that state comparisons computed from the table (and the figure seed's code statistics)."""
    out = []
    dims = sorted({r["latent_dim"] for r in rows})
    paper = [(d, _find(rows, "vae", "paper", d)) for d in dims]
    paper = [(d, r) for d, r in paper if r is not None]
    if paper:
        parts = [f"{_num(r['cells']['min_valid_loss'])} nats per image for latent dimension {d} "
                 f"(epoch {format_cell(COLUMNS[1], r['cells']['best_epoch'])})" for d, r in paper]
        out.append("The paper's number. With the paper's objective (eq. 2-3), the minimal validation loss is "
                   + " and ".join(parts) + ", where the paper writes 000.")

    for d in dims:
        ranked = sorted((r for r in rows if r["latent_dim"] == d),
                        key=lambda r: r["cells"]["test_squared_error"]["mean"])
        if len(ranked) < 2:
            continue
        listing = ", ".join(f"{r['label']} {_num(r['cells']['test_squared_error'])}" for r in ranked)
        first, second = ranked[0], ranked[1]
        sep = _resolved(first["cells"]["test_squared_error"], second["cells"]["test_squared_error"])
        if sep is None:
            verdict = (f"{first['label']} reconstructs best in this single-seed run (no seed-to-seed spread "
                       "is measured, so the ranking may not hold for other seeds)")
        elif sep:
            verdict = (f"{first['label']} reconstructs best, ahead of {second['label']} by more than their "
                       "spreads over seeds")
        else:
            verdict = (f"{first['label']} and {second['label']} reconstruct about equally well: their means "
                       "differ by less than the sum of their spreads over seeds")
        out.append(f"Reconstruction, latent dimension {d}. Test squared error of the mean decode per image "
                   f"(lower is better): {listing}. {verdict[0].upper() + verdict[1:]}.")

    for d in dims:
        ae = _find(rows, "autoencoder", "reconstruction", d)
        vaes = [r for r in (_find(rows, "vae", "paper", d), _find(rows, "vae", "elbo", d)) if r is not None]
        if ae is None or not vaes:
            continue
        a_se, a_rec = ae["cells"]["test_squared_error"], ae["cells"]["test_reconstruction"]
        parts = []
        for v in vaes:
            se, rec, reg = (v["cells"][k] for k in ("test_squared_error", "test_reconstruction", "test_regularizer"))
            change = (se["mean"] - a_se["mean"]) / a_se["mean"] * 100
            word = "higher" if change > 0 else "lower"
            parts.append(f"{v['label']} has {abs(change):.1f}% {word} squared error than the autoencoder "
                         f"({se['mean']:.2f} vs {a_se['mean']:.2f}), a reconstruction term of "
                         f"{rec['mean']:.2f} nats (the autoencoder's: {a_rec['mean']:.2f}) and pays a "
                         f"regulariser of {reg['mean']:.2f} nats")
        out.append(f"What the VAE's noise costs, latent dimension {d}. " + "; ".join(parts) + ".")

    if code_stats:
        out.append(_codes_paragraph(code_stats))

    for key, name in (("test_squared_error", "test squared error"), ("min_valid_loss", "minimal validation loss")):
        lower, higher = [], []
        for r1 in (r for r in rows if r["latent_dim"] == 1):
            r2 = _find(rows, r1["model"], r1["objective"], 2)
            if r2 is None or r1["cells"][key] is None:
                continue
            a, b = r1["cells"][key]["mean"], r2["cells"][key]["mean"]
            (lower if b < a else higher).append(f"{r1['label']} {a:.2f} → {b:.2f}")
        if lower or higher:
            text = f"Latent dimension 1 → 2, {name}: "
            if lower:
                text += "lower for " + ", ".join(lower)
            if higher:
                text += ("; " if lower else "") + "higher for " + ", ".join(higher)
            out.append(text + ".")

    still = [f"{r['label']} z={r['latent_dim']}" for r in rows
             if r["cells"]["best_epoch"] is not None and max(r["cells"]["best_epoch"]["values"]) == epochs]
    if still:
        out.append(f"Training budget. In {len(still)} of {len(rows)} rows ({', '.join(still)}) the lowest "
                   f"validation loss of at least one seed came in the last of the {epochs} epochs: those "
                   "runs were still improving, and more epochs (`--epochs`) may lower their numbers.")
    if any(r["objective"] == "paper" for r in rows) and any(r["objective"] == "elbo" for r in rows):
        out.append("The two VAE losses are not on one scale: eq. (2) samples c with standard deviation "
                   "exp(σ), while eq. (3)'s penalty equals 2·KL(q ‖ N(0, I)) only when σ is a log-variance. "
                   "So the paper's loss is not the negative ELBO, and the VAE (paper) and VAE (ELBO) loss "
                   "columns should not be compared with each other; the squared error compares them.")
    return out


def _codes_paragraph(code_stats: dict) -> str:
    """code_stats: label -> {"dim", "seed", "std" (D,), "inside" (share of test codes with all |c_i| < 1.96)}."""
    parts = []
    for label, s in code_stats.items():
        stds = ", ".join(f"{v:.2f}" for v in s["std"])
        parts.append(f"{label}: standard deviation {stds} per code dimension, {s['inside'] * 100:.0f}% of "
                     "test codes inside the central 95% interval of N(0, 1) in every dimension")
    first = next(iter(code_stats.values()))
    most = max(code_stats, key=lambda label: code_stats[label]["inside"])
    least = min(code_stats, key=lambda label: code_stats[label]["inside"])
    return (f"What the regulariser does to the codes, latent dimension {first['dim']} (seed {first['seed']}, "
            "test set codes, m for the VAEs): " + "; ".join(parts) + f". A draw from N(0, I) falls in that "
            f"region with probability {0.95 ** first['dim'] * 100:.0f}%: the random codes of Figure "
            f"{figure_number('samples')} land where {most} has {code_stats[most]['inside'] * 100:.0f}% of its "
            f"test codes and {least} only {code_stats[least]['inside'] * 100:.0f}%.")


# Davidson et al. 2018 (hyperspherical VAE), Table 1: dynamically binarized MNIST, MLP encoder and
# decoder, latent dimension 2; test log-likelihood in nats (higher is better).
DAVIDSON_2018 = {"gaussian": (-135.73, 0.83), "hyperspherical": -132.50}


def measurement_summary(records: list[RunRecord]) -> dict:
    """The likelihood and classifier protocol, read back from the runs' evaluation.json: IWAE k and
    images, exact-NLL images and grids, the classifier's accuracy and the real-digit reference scores."""
    out: dict = {"grids": []}
    for r in records:
        lik, clf = r.evaluation.get("likelihood") or {}, r.evaluation.get("realism")
        if lik.get("applicable"):
            out.setdefault("iwae_k", lik["iwae"]["k"])
            out.setdefault("iwae_images", lik["iwae"]["images"])
            if "exact" in lik:
                out.setdefault("exact_images", lik["exact"]["images"])
                out["grids"].append((r.config.latent_dim, lik["exact"]["grid"]))
        if clf:
            out.setdefault("classifier_accuracy", clf["classifier_test_accuracy"])
            out.setdefault("realism_images", clf["midpoints"]["images"])
            out.setdefault("real", clf["real"])
    return out


def _grids(grids: list[tuple[int, dict]]) -> str:
    """'latent 1: ±6, scan step 1/64, fine step 1/256; latent 2: ...' (alternatives joined by 'or')."""
    def step(v: float | None) -> str:  # steps are powers of two; None: the scan needed no finer step
        return "none" if v is None else f"1/{round(1 / v)}" if v < 1 else f"{v:g}"

    def values(dim: int, key: str, fmt) -> str:
        found = {g[key] for d, g in grids if d == dim}
        return " or ".join(fmt(v) for v in sorted(found, key=lambda v: (v is not None, v or 0)))

    parts = [f"latent {d}: [−L, L]^{d} with L = {values(d, 'limit', lambda v: f'{v:g}')}, scan step "
             f"{values(d, 'scan_step', step)}, fine step {values(d, 'fine_step', step)}"
             for d in sorted({d for d, _ in grids})]
    return "; ".join(parts)


def measurement_lines(m: dict) -> list[str]:
    """Setup lines stating how the likelihood and classifier tables were measured."""
    lines = []
    if "iwae_k" in m:
        grids = m["grids"]
        quadrature = ""
        if grids:
            quadrature = (f" Exact NLL on {m['exact_images']} test images by quadrature: a scan of the whole square, "
                          "then the fine step on the tiles where each image's integrand lives ("
                          f"{_grids(grids)}); {sum(g['converged'] for _, g in grids)} of {len(grids)} runs "
                          "converged to 0.01 nats per image.")
        lines.append("Likelihoods (VAEs only: PCA and the autoencoder define no p(x)): each VAE with its own "
                     "q(z|x), N(m, exp(σ)²) for the paper's objective (the noise of eq. 2) and N(m, exp(logvar)) "
                     f"for the ELBO. IWAE and the −ELBO split with k = {m['iwae_k']} samples per image on the "
                     f"first {m['iwae_images']} test images (`vaelab evaluate RUN --nll exact --k 5000` gives the "
                     f"long version on all of them).{quadrature}")
    if "classifier_accuracy" in m:
        real = m["real"]
        lines.append(f"Classifier scores: a LeNet-style CNN trained once by vaelab on the first 50000 training "
                     f"images (test accuracy {100 * m['classifier_accuracy']:.2f}%) scores "
                     f"{m['realism_images']} interpolation midpoints and {m['realism_images']} random-code "
                     f"decodes (mean images, pixel probabilities) per run. Real digits it never saw score "
                     f"confidence {real['confidence']:.3f}, entropy {real['entropy']:.3f} nats and MNIST Fréchet "
                     "distance {:.2f} with the same number of images: the floor for a perfect generator."
                     .format(real["frechet"]))
    return lines


def anchor_paragraph(rows: list[dict], *, epochs: int, eval_seed: int) -> str | None:
    """vaelab's latent-2 exact NLL next to Davidson et al. 2018, with the protocol difference stated."""
    z2 = [r for r in rows if r["latent_dim"] == 2 and r["cells"].get("exact_nll")]
    if not z2:
        return None
    mean, sd = DAVIDSON_2018["gaussian"]
    ours = ", ".join(f"{r['label']} {_num(r['cells']['exact_nll'])}" for r in z2)
    return (f"Anchor. Davidson et al. (2018, Table 1) report for a Gaussian VAE with latent dimension 2 on "
            f"dynamically binarized MNIST a test log-likelihood of −{-mean:.2f} ± {sd:.2f} nats, an NLL of "
            f"{-mean:.2f} (their hyperspherical VAE: −{-DAVIDSON_2018['hyperspherical']:.2f}). Here, latent "
            f"dimension 2, exact NLL: {ours} nats per image. The protocols differ: theirs is an "
            "importance-sampled estimate for their own MLP and training schedule; ours is the integral itself "
            f"(quadrature) on test images binarized once with seed {eval_seed}, for the architecture above "
            f"after {epochs} epochs (weights of the best validation epoch). So the difference between the two "
            "cannot be put down to the model family alone.")


def likelihood_paragraphs(rows: list[dict]) -> list[str]:
    """The discussion of the likelihood and classifier columns, from the numbers (empty without them)."""
    out = []
    labelled = [(r, r["cells"]) for r in rows]
    bounds, broken = [], []
    for r, c in labelled:
        nll, iw, gap = c.get("exact_nll_iwae_images"), c.get("iwae"), c.get("posterior_gap")
        if nll is None or iw is None or gap is None:
            continue
        above = [b - a for a, b in zip(nll["values"], iw["values"], strict=True)]  # IWAE − NLL per seed
        spread = {"mean": statistics.fmean(above), "std": statistics.stdev(above) if len(above) > 1 else None}
        name = f"{r['label']} z={r['latent_dim']}"
        bounds.append(f"{name}: IWAE − NLL {_num(spread)}, −ELBO − NLL {_num(gap)}")
        if min(above) < -0.05 or any(b < a - 0.05 for a, b in zip(above, gap["values"], strict=True)):
            broken.append(name)
    if bounds:
        verdict = ("exact NLL ≤ IWAE ≤ −ELBO holds in every run (to 0.05 nats of Monte Carlo error)"
                   if not broken else "exact NLL ≤ IWAE ≤ −ELBO fails beyond 0.05 nats of Monte Carlo error "
                   f"in: {', '.join(broken)}")
        out.append("Bounds and posterior gap, nats per image on the IWAE images: " + "; ".join(bounds)
                   + f". So {verdict}. −ELBO − NLL is KL(q(z|x) ‖ p(z|x)): how much of the true posterior "
                   "each encoder's q misses.")
    for d in sorted({r["latent_dim"] for r in rows}):
        ae = _find(rows, "autoencoder", "reconstruction", d)
        vaes = [v for v in (_find(rows, "vae", "paper", d), _find(rows, "vae", "elbo", d)) if v is not None]
        keys = ("midpoint_confidence", "midpoint_frechet")
        if ae is None or not vaes or any(ae["cells"].get(k) is None for k in keys):
            continue
        listing = "; ".join(f"{r['label']} confidence {_num(r['cells']['midpoint_confidence'], 3)}, MNIST FD "
                            f"{_num(r['cells']['midpoint_frechet'])}"
                            for r in (_find(rows, m, o, d) for m, o in (("pca", "squared-error"),
                                                                         ("autoencoder", "reconstruction"),
                                                                         ("vae", "paper"), ("vae", "elbo")))
                            if r is not None and r["cells"].get("midpoint_confidence"))
        better = [v["cells"]["midpoint_confidence"]["mean"] > ae["cells"]["midpoint_confidence"]["mean"]
                  and v["cells"]["midpoint_frechet"]["mean"] < ae["cells"]["midpoint_frechet"]["mean"] for v in vaes]
        resolved = [_resolved(v["cells"][k], ae["cells"][k]) for v in vaes for k in keys]
        if all(better):
            verdict = "supported: every VAE's midpoints are more confidently classified and closer to real digits"
        elif not any(better):
            verdict = ("not supported: no VAE's midpoints beat the autoencoder's on both confidence and Fréchet "
                       "distance")
        else:
            verdict = "mixed: " + ", ".join(f"{v['label']} {'beats' if b else 'does not beat'} the autoencoder"
                                            for v, b in zip(vaes, better, strict=True))
        if None in resolved:
            verdict += " (one seed: no spread over seeds is measured)"
        elif not all(resolved):
            verdict += " (but some differences are within the spread over seeds)"
        out.append(f"The full-moon / half-moon claim, latent dimension {d}: decodes of (α1 + α2)/2 between test "
                   f"digits of different classes, {listing}. The paper's claim that the VAE's midpoints are "
                   f"digits and the autoencoder's are not is {verdict}.")
    return out


# --- the report ----------------------------------------------------------------------------------

def figure_number(name: str) -> int:
    """The report numbers its figures in the order of `figures.FIGURES`."""
    return list(FIGURES).index(name) + 1


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
    interpolation_classes: tuple[int, int]
    code_stats: dict = field(default_factory=dict)
    explorer: str | None = None  # the latent explorer page, relative to the report (None: not written)
    explorer_runs: tuple[str, ...] = ()  # labels of the runs it shows


def captions(setup: Setup) -> dict[str, str]:
    s, (a, b) = setup.figure_seed, setup.interpolation_classes
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
                         f"the first test digits of class {a} and {b}, decodes along the line between them, "
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
    return [
        f"Command: `{setup.command}` (vaelab {setup.version}).",
        f"Data: {DATASET_NAMES.get(c.dataset, c.dataset)}; the official training set split into {n_train} "
        "training images and its last "
        f"{n_valid} as the validation set; the official {n_test} test images.{subset}",
        f"Pixel model: {pixels}.",
        f"Architecture (all neural models): encoder MLP {c.n_pixels} → {hidden} → code (ReLU between layers; "
        f"the VAE outputs m and σ), decoder mirrored back to {c.n_pixels} Bernoulli logits. PCA: the top "
        "principal directions of one binarized draw of the training images, in closed form.",
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
        ("ul", setup_lines(setup) + measurement_lines(measurement or {})),
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
                anchor = anchor_paragraph(shown, epochs=setup.epochs, eval_seed=setup.base.eval_seed)
                if anchor and (setup.base.dataset, setup.base.binarize) == ("mnist", "dynamic"):
                    blocks.append(("p", anchor))
            blocks.append(("ul", table_notes(shown, cols)[1]))
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


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


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
            parts.append(_markdown_table(block[1], block[2]))
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
