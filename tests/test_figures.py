"""Figures: each function writes a PNG of the size it promises that is not blank. Synthetic inputs;
the report's figures from real runs are checked in test_reproduce.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from vaelab import figures
from vaelab.config import RunConfig


def png_stats(path: Path) -> dict:
    """Size (width, height), the std of the gray levels, the share of clearly coloured pixels and the
    share of pixels that are not white (ink)."""
    rgb = imread(path)[..., :3].astype(np.float64)  # (H, W, 3) in [0, 1]
    saturation = rgb.max(-1) - rgb.min(-1)
    return {"size": (rgb.shape[1], rgb.shape[0]), "std": float(rgb.mean(-1).std()),
            "colored": float((saturation > 0.3).mean()), "ink": float((rgb.mean(-1) < 0.97).mean())}


def digits(n: int, seed: int = 0) -> torch.Tensor:
    """n fake 'digits' (n, 784): a bright blob at a random place on black."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centers = 6 + 16 * torch.rand(n, 2, generator=g)
    d2 = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 18).reshape(n, 784)


def test_tile_places_images_in_a_grid_with_padding():
    images = torch.arange(6, dtype=torch.float32)[:, None].expand(6, 4) / 10  # 2 x 2 "images"
    grid = figures.tile(images, nrow=4, side=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 4 * 3 + 1)
    assert grid[1, 1] == pytest.approx(0.0) and grid[1, 4] == pytest.approx(0.1)
    assert grid[4, 4] == pytest.approx(0.5)
    assert grid[4, 7] == 1.0  # an empty cell stays at the background value


def test_structure_figure_is_drawn_from_the_config(tmp_path):
    path = tmp_path / "structure.png"
    figures.vae_structure(RunConfig(latent_dim=2, hidden=(400, 100)), path)
    stats = png_stats(path)
    assert stats["size"] == (1300, 480)
    assert stats["ink"] > 0.2  # the filled layer boxes


def test_structure_figure_labels_follow_the_config(tmp_path):
    """Different layer sizes give a different drawing (the numbers are written in the boxes)."""
    figures.vae_structure(RunConfig(latent_dim=2, hidden=(512, 256)), tmp_path / "a.png")
    figures.vae_structure(RunConfig(latent_dim=2, hidden=(64, 32)), tmp_path / "b.png")
    assert not np.array_equal(imread(tmp_path / "a.png"), imread(tmp_path / "b.png"))


def test_training_curves(tmp_path):
    history = [{"epoch": e, "train_loss": 200 - 10 * e, "valid_loss": 190 - 8 * e} for e in range(1, 6)]
    curves = {(label, dim): [history, history] for label in ("AE", "VAE") for dim in (1, 2)}
    path = tmp_path / "curves.png"
    figures.training_curves(curves, path)
    stats = png_stats(path)
    assert stats["size"] == (800, 600)
    assert stats["colored"] > 0.002  # the blue and orange lines


def test_image_figures(tmp_path):
    rows = [(f"model {i}", digits(10, seed=i)) for i in range(4)]
    figures.reconstructions(digits(10), rows, tmp_path / "rec.png")
    figures.samples([[("a", digits(36)), ("b", digits(36, 1))], [("c", digits(36, 2)), ("d", digits(36, 3))]],
                    tmp_path / "samples.png")
    interp = [(f"model {i}", digits(11, seed=i)) for i in range(4)]
    figures.interpolation(digits(1)[0], digits(1, 1)[0], interp, tmp_path / "interp.png", mid_index=5,
                          classes=(0, 1))
    k = 15
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / k, 1 - 0.5 / k, k))
    figures.manifold([("VAE", {1: digits(k), 2: digits(k * k)}), ("VAE 2", {1: digits(k), 2: digits(k * k)})],
                     quantiles, tmp_path / "manifold.png")
    expected = {"rec.png": (600, 230), "samples.png": (640, 680), "interp.png": (642, 255),
                "manifold.png": (1120, 700)}
    for name, size in expected.items():
        stats = png_stats(tmp_path / name)
        assert stats["size"] == size, name
        assert stats["std"] > 0.25, name  # black tiles with bright digits, not an empty canvas


def test_interpolation_marks_the_midpoint_in_red(tmp_path):
    interp = [("m", digits(11))]
    figures.interpolation(digits(1)[0], digits(1, 1)[0], interp, tmp_path / "i.png", mid_index=5, classes=(0, 1))
    rgb = imread(tmp_path / "i.png")[..., :3]
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 100
    columns = np.nonzero(red.any(0))[0]
    assert 0.35 < columns.mean() / rgb.shape[1] < 0.75  # the frame sits in the middle of the row


def test_latent_space(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (5000,), generator=g)
    rows = [(name, [(1, torch.randn(5000, 1, generator=g)), (2, torch.randn(5000, 2, generator=g))])
            for name in ("PCA", "AE")]
    path = tmp_path / "latent.png"
    figures.latent_space(rows, labels, path)
    stats = png_stats(path)
    assert stats["size"] == (920, 710)
    assert stats["colored"] > 0.005  # points coloured by digit (the legend alone has < 0.001)
