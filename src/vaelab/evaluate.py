"""Evaluation of a saved run, rebuilt from its directory alone: the objective's terms on the
validation and test sets (nats per image), the common squared-error metric, and on request the
likelihoods (likelihood.py) and classifier scores (classifier.py); saved as evaluation.json."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .checkpoint import load_tensors, load_trained
from .classifier import load_classifier, realism
from .config import IWAE_K
from .data import SPECS, PixelData, load_data
from .device import keep_freed_memory
from .likelihood import measure, parse_estimators
from .models import model_device
from .objectives import LIKELIHOOD_NAMES, bits_per_dim, evaluate_objective
from .progress import to_stderr
from .runfiles import EVALUATION_FILE, MODEL_FILE, read_json, write_json
from .training import NonFiniteLossError, check_precision
from .version import __version__


class NonFiniteResultError(NonFiniteLossError):
    """An evaluation came out NaN or infinite; the message names the split and the term."""


REQUEST_FORMAT = 1  # (raise it when the request's keys or meaning change: older files are then re-scored)


def _request(epoch: int | None, *, nll: str | Sequence[str] | None = None, k: int = IWAE_K,
             nll_images: int | None = None, iwae_images: int | None = None, classifier: bool = False,
             classifier_images: int = 1000, precision: str = "float32") -> dict:
    """What `evaluate_run` is asked for the checkpoint of `epoch` (saved as "request" in evaluation.json)."""
    return {"format": REQUEST_FORMAT, "version": __version__, "epoch": epoch,
            "nll": list(parse_estimators(nll)) if nll is not None else [], "k": k, "nll_images": nll_images,
            "iwae_images": iwae_images, "classifier": classifier, "classifier_images": classifier_images,
            "precision": precision}


def saved_evaluation(run_dir: str | Path, **options) -> dict | None:
    """The run's evaluation.json if the last `evaluate_run` on it was asked exactly `options` (its keyword
    arguments past `data`) for the checkpoint it holds now, else None. The merged file's other keys may
    be older, so only the whole request counts."""
    path = Path(run_dir) / EVALUATION_FILE
    if not path.exists():
        return None
    saved = read_json(path)
    epoch = load_tensors(Path(run_dir) / MODEL_FILE)[1].get("epoch")
    return saved if saved.get("request") == _request(epoch, **options) else None


def evaluate_run(run_dir: str | Path, *, data: PixelData | None = None, data_dir: str | Path | None = None,
                 device: str = "auto", nll: str | Sequence[str] | None = None, k: int = IWAE_K,
                 nll_images: int | None = None, iwae_images: int | None = None, classifier: bool = False,
                 classifier_images: int = 1000, precision: str = "float32",
                 log: Callable[[str], None] = to_stderr, bar: bool | None = None) -> dict:
    """Score the best checkpoint on validation and test; merge into `evaluation.json` and return it.

    Always: the run's objective on the validation and test sets ("valid", "test": mean terms in nats
    per image, the loss in bits per dimension, and the squared error) and which pixel likelihood the
    nats are in ("pixel_likelihood"). `nll` ("exact", "iwae" or "exact,iwae") adds
    `likelihood.measure` on the first `nll_images` test images (default all) under "likelihood", IWAE
    with `k` samples on the first `iwae_images` of them. `classifier` adds the classifier scores of
    `classifier.realism` on `classifier_images` midpoints and samples under "realism". `log` receives
    progress lines and the classifier's messages; `bar` (None: when stderr is a terminal) tqdm bars.
    `precision` "bfloat16" computes the validation and test terms under bfloat16 autocast (native bfloat16
    only; recorded as "precision"); the likelihoods are always computed in float32 or float64.
    """
    run_dir = Path(run_dir)
    estimators = parse_estimators(nll) if nll is not None else ()  # a bad name fails before any work
    model, config, meta = load_trained(run_dir, device)
    check_precision(precision, model_device(model))
    if model_device(model).type == "cpu":
        keep_freed_memory()
    data = (data if data is not None else load_data(config, data_dir)).to(model_device(model))
    if classifier and config.dataset not in SPECS:
        raise ValueError(f"--classifier scores need a classifier trained on the dataset; vaelab has them for "
                         f"{', '.join(SPECS)}, not for {config.dataset}")
    request = _request(meta.get("epoch"), nll=nll, k=k, nll_images=nll_images, iwae_images=iwae_images,
                       classifier=classifier, classifier_images=classifier_images, precision=precision)
    result = {"epoch": meta.get("epoch"), "precision": precision, "request": request}  # (`saved_evaluation`)
    if config.model != "pca":  # what the loss's reconstruction term is: −log p(x|z) under this likelihood
        result["pixel_likelihood"] = {"name": config.likelihood, "description": LIKELIHOOD_NAMES[config.likelihood],
                                      "dimensions": config.n_pixels}
    for split in ("valid", "test"):
        result[split] = evaluate_objective(model, config.objective, getattr(data, split), beta=config.beta,
                                           seed=config.eval_seed, k=config.k, precision=precision)
        bad = [f"{term} {value}" for term, value in result[split].items() if not math.isfinite(value)]
        if bad:  # a non-finite score is an error, never a number in a table
            raise NonFiniteResultError(f"{run_dir}: the {split} {bad[0]} per image is not a finite number; "
                                       "nothing was saved")
        if config.model != "pca":
            result[split]["bits_per_dim"] = bits_per_dim(result[split]["loss"], config.n_pixels)
    if estimators:
        result["likelihood"] = measure(model, config, data.test[:nll_images], nll=estimators, k=k,
                                       iwae_images=iwae_images, log=log, bar=bar)
    if classifier:
        scorer, record = load_classifier(config.dataset, data_dir, log=log)
        result["realism"] = realism(model, config, data, scorer, record, n=classifier_images)
    path = run_dir / EVALUATION_FILE
    saved = read_json(path) if path.exists() else {}
    saved.update(result)
    write_json(path, saved)
    return saved
