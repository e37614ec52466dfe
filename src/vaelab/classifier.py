"""A small MNIST classifier, trained once and cached, that scores how digit-like generated images are:
interpolation midpoints (α1 + α2)/2 (the paper's full-moon / half-moon argument) and prior samples.

Scores: mean top-class confidence, mean predictive entropy (nats), and a Fréchet distance between the
classifier's penultimate features of real test images and of generated ones (the FID formula of
Heusel et al. 2017 on this classifier's 128 features: an "MNIST Fréchet distance", NOT comparable to
Inception FID numbers).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_tensors, load_weights, save_tensors
from .config import RunConfig
from .data import PixelData, Splits, cache_dir, load_splits
from .models import decode_to_pixels, encode_mean, sample_images
from .runfiles import CheckpointError, write_json

# Training recipe: 3 epochs on 50000 images reach 99.3% test accuracy on MNIST. A changed recipe retrains the cache.
RECIPE = {"version": 1, "epochs": 3, "batch_size": 128, "lr": 3e-3, "seed": 0}
FEATURES = 128  # width of the penultimate layer used for the Fréchet distance
# The last HOLDOUT images of the official training set are never shown to the classifier (they are
# vaelab's default validation split), so real images it has not seen can be scored as a reference.
HOLDOUT = 10000


class Classifier(nn.Module):
    """LeNet-style CNN with batch norm: images (N, 784) in [0, 1] -> logits (N, 10); `features` (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, 12, 12)
            nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 4, 4)
            nn.Flatten(),
        )
        self.to_features = nn.Sequential(nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU())
        self.to_logits = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_features(self.conv(x.reshape(-1, 1, 28, 28)))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.features(x))  # (N, 10)


def cache_paths(dataset: str) -> tuple[Path, Path]:
    stem = cache_dir() / "classifier" / f"{dataset}-cnn-v{RECIPE['version']}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_classifier(splits: Splits, *, recipe: dict | None = None,
                     log: Callable[[str], None] = _log) -> tuple[Classifier, dict]:
    """Train on `splits.train_x` (grayscale) with one-cycle Adam; test on the official test set.

    `recipe` (default RECIPE) gives epochs, batch_size, lr and seed. Returns the model (eval mode)
    and its record: test accuracy, the recipe, seconds.
    """
    recipe = recipe or RECIPE
    epochs, batch_size, lr, seed = (recipe[k] for k in ("epochs", "batch_size", "lr", "seed"))
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier()
    x, y = splits.train_x.float() / 255, splits.train_y  # (N, 784), (N,)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"classifier epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}")
    model.eval()
    test_acc = accuracy(model, splits)
    record = {"test_accuracy": test_acc, "test_images": len(splits.test_x), "train_images": len(x),
              **recipe, "seconds": round(time.perf_counter() - started, 1)}
    return model, record


@torch.no_grad()
def predict(model: Classifier, x: torch.Tensor, batch_size: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, 10) and features (N, 128) of images x (N, 784) in [0, 1]."""
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].float())
        feats.append(f)
        probs.append(model.to_logits(f).softmax(-1))
    return torch.cat(probs), torch.cat(feats)


def accuracy(model: Classifier, splits: Splits) -> float:
    """Share of the official test images classified correctly."""
    probs, _ = predict(model, splits.test_x.float() / 255)
    return float((probs.argmax(-1) == splits.test_y).double().mean())


def load_classifier(dataset: str = "mnist", data_dir: str | Path | None = None, *,
                    log: Callable[[str], None] = _log) -> tuple[Classifier, dict]:
    """The cached classifier for `dataset` (trained and cached on first use, its accuracy then printed)."""
    weights, record_path = cache_paths(dataset)
    model = Classifier()
    try:
        tensors, meta = load_tensors(weights)
        if meta.get("recipe") != RECIPE:
            raise CheckpointError(f"{weights}: made with another recipe")
        load_weights(model, tensors, weights)
        record = meta["record"]
        model.eval()
    except CheckpointError as e:
        if weights.exists():
            log(f"retraining the classifier ({e})")
        log(f"training the {dataset} classifier once (cached in {weights.parent})")
        model, record = train_classifier(load_splits(dataset, data_dir, valid_size=HOLDOUT), log=log)
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(weights, model.state_dict(), {"kind": "classifier", "recipe": RECIPE, "record": record})
        write_json(record_path, {"dataset": dataset, "recipe": RECIPE, **record})
        # Said once, when trained: `reproduce` loads the cached one for every run it scores, and each
        # run's scores already name the accuracy (`summary_lines`).
        log(f"{dataset} classifier: test accuracy {100 * record['test_accuracy']:.2f}%")
    return model, record


# --- scores --------------------------------------------------------------------------------------

def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between feature sets a (N, F) and b (M, F), in float64.

    Tr (Σa Σb)^½ = Σ √λ over the eigenvalues λ of Σa^½ Σb Σa^½ (symmetric, so eigh is stable).
    """
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (F, F)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float(mu @ mu + cov_a.trace() + cov_b.trace() - 2 * cross)


def scores(model: Classifier, images: torch.Tensor, reference_features: torch.Tensor) -> dict:
    """Mean top-class confidence, mean entropy (nats) and Fréchet distance to the reference features."""
    probs, feats = predict(model, images)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    return {"confidence": float(probs.max(-1).values.mean()), "entropy": float(entropy.mean()),
            "frechet": frechet_distance(feats, reference_features), "images": len(images)}


def different_class_pairs(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n index pairs (i, j) into `labels` with labels[i] != labels[j], drawn with a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    i = torch.randint(len(labels), (4 * n,), generator=generator)
    j = torch.randint(len(labels), (4 * n,), generator=generator)
    keep = labels[i] != labels[j]  # with 10 balanced classes about 90% are kept, so 4n is plenty
    return i[keep][:n], j[keep][:n]


@torch.no_grad()
def realism(model: nn.Module, config: RunConfig, data: PixelData, classifier: Classifier, record: dict, *,
            n: int = 1000, seed: int | None = None) -> dict:
    """Classifier scores of n interpolation midpoints and n prior samples of `model`, plus a reference.

    Midpoints: codes α1, α2 (encode_mean of the run's own test inputs) of two test digits of
    different classes, decode of (α1 + α2)/2. Samples: `sample_images` (N(0, I) codes; PCA: its own
    code variances). The Fréchet reference is the whole real test set (grayscale, as the classifier
    was trained); "real" scores the last n images of the official training set, which the classifier
    never saw (HOLDOUT), the same way: what real digits score with the same number of images.
    """
    seed = config.eval_seed if seed is None else seed
    splits = data.splits
    _, reference = predict(classifier, splits.test_x.float() / 255)
    i, j = different_class_pairs(splits.test_y, n, seed)
    codes = (encode_mean(model, data.test[i.to(data.test.device)])
             + encode_mean(model, data.test[j.to(data.test.device)])) / 2  # (n, D)
    midpoints = decode_to_pixels(model, codes).cpu()
    samples = sample_images(model, n, seed=seed).cpu()
    real = torch.cat([splits.train_x, splits.valid_x])[-min(n, HOLDOUT):].float() / 255
    return {"classifier_test_accuracy": record["test_accuracy"], "feature_dim": FEATURES, "seed": seed,
            "midpoints": scores(classifier, midpoints, reference),
            "samples": scores(classifier, samples, reference),
            "real": scores(classifier, real, reference)}


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines for a `realism` result (what `vaelab evaluate --classifier` prints)."""
    lines = [f"classifier scores (test accuracy {100 * result['classifier_test_accuracy']:.2f}%; "
             f"MNIST Fréchet distance on its {result['feature_dim']} features, "
             "not comparable to Inception FID):",
             f"{'images':24} {'confidence':>10} {'entropy':>10} {'Fréchet':>10}"]
    names = {"midpoints": "interpolation midpoints", "samples": "prior samples", "real": "real (reference)"}
    for key, name in names.items():
        r = result[key]
        lines.append(f"{name:24} {r['confidence']:10.3f} {r['entropy']:10.3f} {r['frechet']:10.2f}")
    return lines
