"""Figures as PNG files, one function per figure; matplotlib's object API only (no pyplot state)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .checkpoint import atomic_write


def tile(images: torch.Tensor | np.ndarray, *, nrow: int, side: int = 28, pad: int = 2) -> np.ndarray:
    """(N, side*side) images in [0, 1] -> one (rows*(side+pad)+pad, nrow*(side+pad)+pad) array."""
    images = np.asarray(images.detach().cpu() if torch.is_tensor(images) else images, dtype=np.float32)
    images = images.reshape(-1, side, side)
    rows = math.ceil(len(images) / nrow)
    grid = np.ones((rows * (side + pad) + pad, nrow * (side + pad) + pad), dtype=np.float32)
    for k, img in enumerate(images):
        r, c = divmod(k, nrow)
        grid[pad + r * (side + pad): pad + r * (side + pad) + side,
             pad + c * (side + pad): pad + c * (side + pad) + side] = img
    return grid


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> None:
    """Render `fig` to PNG and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write(Path(path), buffer.getvalue())


def image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8, scale: int = 3) -> None:
    """Save images (N, 784) in [0, 1] as a grid PNG, white digits on black tiles, `scale` pixels per pixel."""
    grid = tile(images, nrow=nrow)
    fig = Figure(figsize=(grid.shape[1] * scale / 100, grid.shape[0] * scale / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(Path(path), buffer.getvalue())
