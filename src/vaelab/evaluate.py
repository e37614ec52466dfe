"""Evaluation of a saved run, rebuilt from its directory alone: the objective's terms on the
validation and test sets (nats per image) and the common squared-error metric."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_config, load_model, read_json, write_json
from .config import RunConfig
from .data import PixelData
from .likelihood import measure
from .models import PCA, decode_to_pixels
from .objectives import evaluate_objective
from .train import init_model, load_data, resolve_device

EVALUATION_FILE = "evaluation.json"


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.state_dict().values())).device


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[nn.Module, RunConfig, dict]:
    """(model with its best-validation weights, config, weight metadata) from a run directory."""
    config = load_config(run_dir)
    model = init_model(config, resolve_device(device))
    meta = load_model(run_dir, model)
    model.eval()
    return model, config, meta


def evaluate_run(run_dir: str | Path, *, data: PixelData | None = None, data_dir: str | Path | None = None,
                 device: str = "auto", nll: str | None = None, k: int = 5000, nll_images: int | None = None,
                 iwae_images: int | None = None, classifier: bool = False, classifier_images: int = 1000,
                 log: Callable[[str], None] | None = None) -> dict:
    """Score the best checkpoint on validation and test; merge into `evaluation.json` and return it.

    `nll` ("exact" | "iwae") adds the likelihood numbers of `likelihood.measure` on the first
    `nll_images` test images (default all) under "likelihood" (IWAE and the ELBO split with k samples
    on the first `iwae_images` of them);
    `classifier` adds the classifier scores of `classifier.realism` under "realism"; `log` receives
    the classifier's messages (default: stderr).
    """
    run_dir = Path(run_dir)
    model, config, meta = load_run(run_dir, device)
    data = (data if data is not None else load_data(config, data_dir)).to(model_device(model))
    result = {"epoch": meta.get("epoch")}
    for split in ("valid", "test"):
        result[split] = evaluate_objective(model, config.objective, getattr(data, split), beta=config.beta,
                                           seed=config.eval_seed)
    if nll is not None:
        result["likelihood"] = measure(model, config, data.test[:nll_images], nll=nll, k=k,
                                       iwae_images=iwae_images)
    if classifier:
        from .classifier import load_classifier, realism  # imported here: classifier uses sample_images

        scorer, record = load_classifier(config.dataset, data_dir, **({"log": log} if log else {}))
        result["realism"] = realism(model, config, data, scorer, record, n=classifier_images)
    path = run_dir / EVALUATION_FILE
    saved = read_json(path) if path.exists() else {}
    saved.update(result)
    write_json(path, saved)
    return saved


@torch.no_grad()
def sample_images(model: nn.Module, config: RunConfig, n: int, *, seed: int = 0) -> torch.Tensor:
    """n images (n, P) in [0, 1]: decodes of codes drawn from N(0, I) (for PCA: N(0, diag(variances)))."""
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, config.latent_dim, generator=generator, device=device)
    if isinstance(model, PCA):
        z = z * model.variances.sqrt()
    return decode_to_pixels(model, z)
