"""Figures as PNG files, one function per figure; matplotlib's object API only (no pyplot state).

The report's figures (`FIGURES`) take arrays already computed from the runs (codes, decodes) and a
path; `vaelab.reproduce.make_figures` computes the arrays. Images are (N, 784) in [0, 1] (MNIST's
experiment); `image_grid` (`vaelab sample`) takes any (C, H, W).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.patches
import numpy as np
import torch
from matplotlib.figure import Figure

from .config import RunConfig
from .runfiles import atomic_write

# The report's figures, in reading order: name -> what it shows (the file is figures/<name>.png).
FIGURES = {
    "structure": "the VAE of eq. (2)-(3) drawn from its config (the paper's Figure 1)",
    "curves": "training and validation loss per epoch",
    "reconstructions": "test digits and their mean reconstructions",
    "samples": "decodes of random codes: prior samples (VAE) and random codes (PCA, autoencoder)",
    "latent": "the test set in latent space, coloured by digit",
    "manifold": "the learned manifold: decodes at Gaussian quantiles",
    "interpolation": "decodes along the line between the codes of two test digits",
}


def figure_number(name: str) -> int:
    """The report numbers its figures in the order of `FIGURES`."""
    return list(FIGURES).index(name) + 1


DIGIT_COLORS = "tab10"  # one colour per digit class in the latent-space figure


def tile(images: torch.Tensor | np.ndarray, *, nrow: int, side: int = 28, pad: int = 2,
         shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Images in [0, 1] -> one array of them in rows of `nrow`, `pad` pixels apart.

    (N, side·side) grey squares -> (rows·(side+pad)+pad, nrow·(side+pad)+pad); with `shape` (C, H, W),
    (N, C·H·W) images -> (rows·(H+pad)+pad, nrow·(W+pad)+pad), with a trailing axis of 3 for colour."""
    images = np.asarray(images.detach().cpu() if torch.is_tensor(images) else images, dtype=np.float32)
    c, h, w = shape or (1, side, side)
    images = images.reshape(-1, c, h, w).transpose(0, 2, 3, 1)  # (N, H, W, C)
    rows = math.ceil(len(images) / nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    for k, img in enumerate(images):
        r, col = divmod(k, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid[..., 0] if c == 1 else grid


# File name suffix -> the format written (matplotlib's name for it); any other suffix is refused.
IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def image_format(path: str | Path) -> str:
    """The format that `path`'s suffix names (case-insensitive); ValueError for any other suffix."""
    fmt = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: the file name must end in {', '.join(IMAGE_FORMATS)} (the format to write)")
    return fmt


def check_output_file(path: str | Path) -> None:
    """ValueError unless an image can be written at `path`: a known suffix, not a directory, and an
    existing, writable folder. Called before any work, so a bad -o costs nothing."""
    path = Path(path)
    image_format(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name such as {path / 'samples.png'}")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder for {path.name}; create it first or choose another path")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{folder}: cannot write there (permission denied); choose another path")


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> None:
    """Render `fig` in the format its suffix names (IMAGE_FORMATS) and write it atomically.

    A PNG is exactly figsize x dpi pixels (no tight bounding box), so its size is known in advance;
    the figures below use matplotlib's constrained layout to keep labels inside.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format=image_format(path), dpi=dpi)
    atomic_write(Path(path), buffer.getvalue())


def image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8, scale: int = 3,
               shape: tuple[int, int, int] = (1, 28, 28)) -> None:
    """Save images (N, C·H·W) in [0, 1] of `shape` (C, H, W) as a grid image (PNG, JPEG, PDF or SVG, as the
    suffix of `path` says), `scale` pixels per pixel; grey images white on black."""
    grid = np.clip(tile(images, nrow=nrow, shape=shape), 0, 1)
    fig = Figure(figsize=(grid.shape[1] * scale / 100, grid.shape[0] * scale / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    save_figure(fig, path, dpi=100)


def show(ax, grid: np.ndarray, **options) -> None:
    """imshow of a tiled array in [0, 1]: grey (2-D, NaN drawn white) or colour (H, W, 3; NaN white)."""
    if grid.ndim == 2:
        cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, interpolation="nearest", **options)
    else:
        ax.imshow(np.nan_to_num(np.clip(grid, 0, 1), nan=1.0), interpolation="nearest", **options)


def _image_rows(rows: list[tuple[str, torch.Tensor]], *, ncols: int, cell: float = 0.42, left: float = 1.7,
                top: float = 0.1, shape: tuple[int, int, int] = (1, 28, 28)) -> tuple[Figure, object, np.ndarray]:
    """A figure of labelled rows of images (each (<= ncols, C·H·W) of `shape`), tiled into one image.

    The layout is explicit (no automatic layout): `cell` inches per image (its width), `left` inches
    for the row labels, `top` inches above. Returns (figure, axes, tiled array).
    """
    c, h, w = shape
    pad = 2
    blocks = []
    for _, images in rows:
        images = np.asarray(images.detach().cpu() if torch.is_tensor(images) else images, dtype=np.float32)
        padded = np.full((ncols, c * h * w), np.nan, dtype=np.float32)  # NaN: an empty cell, drawn white
        padded[:len(images)] = images.reshape(len(images), -1)
        blocks.append(tile(padded, nrow=ncols, pad=pad, shape=shape)[:-pad])
    blocks.append(np.ones((pad, *blocks[0].shape[1:]), dtype=np.float32))
    grid = np.concatenate(blocks, axis=0)
    width, height = ncols * cell, len(rows) * cell * h / w  # inches of the tiled image
    margin = 0.1
    fig = Figure(figsize=(left + width + margin, top + height + margin), dpi=100)
    W, H = fig.get_size_inches()
    ax = fig.add_axes((left / W, margin / H, width / W, height / H))
    show(ax, grid, aspect="auto")
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(rows))], [label for label, _ in rows])
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig, ax, grid


def vae_structure(config: RunConfig, path: str | Path) -> None:
    """The paper's Figure 1 from an actual config: encoder x -> hidden -> (m, σ); noise e ~ N(0, 1);
    c = exp(σ)·e + m (eq. 2); decoder c -> hidden -> Bernoulli logits; the loss of eq. (3). 1300 x 480 px."""
    fig = Figure(figsize=(13, 4.8), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    hidden, d, p = list(config.hidden), config.latent_dim, config.n_pixels
    step, width = 1.55, 1.15
    biggest = max([p, *hidden])

    def height(n: int) -> float:
        return 0.55 + 2.2 * math.sqrt(n / biggest)

    def box(col: float, y: float, n: int | None, text: str, color: str, h: float | None = None) -> tuple:
        x = col * step
        h = h if h is not None else height(n)
        ax.add_patch(matplotlib.patches.FancyBboxPatch((x - width / 2, y - h / 2), width, h,
                                                       boxstyle="round,pad=0.03", fc=color, ec="black", lw=1))
        ax.text(x, y, text, ha="center", va="center", fontsize=9.5)
        return (x, y, h)

    def arrow(a: tuple, b: tuple, **kw) -> None:
        ax.annotate("", xy=(b[0] - width / 2, b[1]), xytext=(a[0] + width / 2, a[1]),
                    arrowprops=dict(arrowstyle="-|>", color="black", lw=1.1, shrinkA=2, shrinkB=2, **kw))

    enc_color, code_color, noise_color, dec_color = "#cfe2f3", "#fde9b3", "#e3d3f0", "#d5ecd4"
    nodes = [box(0, 0, p, f"x\n{p} pixels", "#eeeeee")]
    for i, h in enumerate(hidden):
        nodes.append(box(1 + i, 0, h, f"Linear + ReLU\n{h}", enc_color))
    col = len(hidden) + 1
    m = box(col, 1.05, d, f"m\n{d}", code_color, h=height(d) + 0.3)
    s = box(col, -1.05, d, f"σ\n{d}", code_color, h=height(d) + 0.3)
    arrow(nodes[-1], m)
    arrow(nodes[-1], s)
    noise = box(col + 1, -1.05, d, "exp(σ)·e", noise_color, h=height(d) + 0.3)
    e = box(col + 1, -2.35, d, f"e ~ N(0, 1)\n{d}", noise_color, h=height(d) + 0.3)
    arrow(s, noise)
    ax.annotate("", xy=(e[0], noise[1] - noise[2] / 2), xytext=(e[0], e[1] + e[2] / 2),
                arrowprops=dict(arrowstyle="-|>", color="black", lw=1.1))
    c = box(col + 2, 0, d, f"c\n{d}", code_color, h=height(d) + 0.5)
    ax.text(c[0], c[2] / 2 + 0.15, "c = m + exp(σ)·e", ha="center", va="bottom", fontsize=9.5)
    ax.annotate("", xy=(c[0] - width / 2, c[1] + 0.15), xytext=(m[0] + width / 2, m[1]),
                arrowprops=dict(arrowstyle="-|>", color="black", lw=1.1))
    ax.annotate("", xy=(c[0] - width / 2, c[1] - 0.15), xytext=(noise[0] + width / 2, noise[1]),
                arrowprops=dict(arrowstyle="-|>", color="black", lw=1.1))
    prev = c
    for i, h in enumerate(reversed(hidden)):
        node = box(col + 3 + i, 0, h, f"Linear + ReLU\n{h}", dec_color)
        arrow(prev, node)
        prev = node
    out = box(col + 3 + len(hidden), 0, p, f"Bernoulli\nlogits\n{p}", dec_color)
    arrow(prev, out)
    for a, b in zip(nodes[:-1], nodes[1:], strict=True):
        arrow(a, b)
    top = height(biggest) / 2 + 0.35
    ax.text(step * (len(hidden) + 1) / 2 + step / 2, top, "encoder", ha="center", fontsize=11, weight="bold")
    ax.text(step * (col + 3 + len(hidden) / 2), top, "decoder", ha="center", fontsize=11, weight="bold")
    ax.text(step * (col + 1), 2.25, f"eq. (2): noise = exp(σ)·e, c = noise + m   (latent dimension {d})",
            ha="center", fontsize=10)
    ax.text(c[0] - width / 2, -2.35,
            "loss = −log p(x | c)  +  Σᵢ (exp(σᵢ) − (1 + σᵢ) + mᵢ²)     eq. (3)\n"
            f"−log p(x | c): Bernoulli, summed over the {p} pixels\n"
            f"Σᵢ: over the {d} code dimensions",
            ha="left", va="center", fontsize=10)
    ax.set_xlim(-step / 2 - 0.2, step * (col + 3 + len(hidden)) + step / 2 + 0.2)
    ax.set_ylim(-3.0, 2.6)
    save_figure(fig, path)


def training_curves(curves: dict[tuple[str, int], list[list[dict]]], path: str | Path) -> None:
    """Loss per epoch (nats per image): one panel per (model label, latent dim) -> a list of metrics.jsonl
    histories (one per seed); validation solid, training dashed. 4 x 3 inches per panel at 100 dpi."""
    labels = list(dict.fromkeys(label for label, _ in curves))
    dims = sorted({dim for _, dim in curves})
    fig = Figure(figsize=(4 * len(labels), 3 * len(dims)), dpi=100, layout="constrained")
    axes = fig.subplots(len(dims), len(labels), squeeze=False)
    for r, dim in enumerate(dims):
        for c, label in enumerate(labels):
            ax = axes[r][c]
            for s, history in enumerate(curves.get((label, dim), [])):
                epochs = [h["epoch"] for h in history]
                kw = dict(marker="o", markersize=3, lw=1.2)
                ax.plot(epochs, [h["valid_loss"] for h in history], color="C0",
                        label="validation" if s == 0 else None, **kw)
                ax.plot(epochs, [h["train_loss"] for h in history], color="C1", ls="--",
                        label="training" if s == 0 else None, **kw)
            ax.set_title(f"{label}, z={dim}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss (nats per image)")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def reconstructions(originals: torch.Tensor, rows: list[tuple[str, torch.Tensor]], path: str | Path, *,
                    shape: tuple[int, int, int] = (1, 28, 28), what: str = "test digits") -> None:
    """Test images (N, C·H·W) in the first row, then one row of mean reconstructions per (label, images)."""
    fig, _, _ = _image_rows([(what, originals), *rows], ncols=len(originals), shape=shape)
    save_figure(fig, path)


def samples(panels: list[list[tuple[str, torch.Tensor]]], path: str | Path, *,
            shape: tuple[int, int, int] = (1, 28, 28)) -> None:
    """A grid of panels (rows of (title, images (n, C·H·W))), each panel a square tile of its images."""
    n_rows, n_cols = len(panels), max(len(row) for row in panels)
    fig = Figure(figsize=(3.2 * n_cols, 3.4 * n_rows), dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(panels):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(row):
                title, images = row[c]
                show(ax, tile(images, nrow=math.ceil(math.sqrt(len(images))), shape=shape))
                ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def latent_space(rows: list[tuple[str, list[tuple[int, torch.Tensor]]]], labels: torch.Tensor,
                 path: str | Path, *, names: list[str] | None = None, what: str = "digit") -> None:
    """Codes of the test set coloured by digit: rows of (model label, [(latent dim, codes (N, D))]).

    D = 1: a strip per digit (code on x, digit on y, jittered); D >= 2: a scatter of the first two code
    dimensions. 4.6 x 3.3 inches per panel. `names`: the class of each label 0, 1, ... (default the
    digits 0-9); labels of -1 (images without a class) are drawn grey, `what` names the classes.
    """
    labels = np.asarray(labels)
    names = [str(d) for d in range(10)] if names is None else list(names)
    n_cols = max(len(panels) for _, panels in rows)
    fig = Figure(figsize=(4.6 * n_cols, 3.3 * len(rows) + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    colors = matplotlib.colormaps[DIGIT_COLORS](labels % 10)
    colors[labels < 0] = (0.5, 0.5, 0.5, 1.0)
    jitter = np.random.default_rng(0).uniform(-0.35, 0.35, len(labels))  # fixed, so figures are reproducible
    for r, (label, panels) in enumerate(rows):
        for c, (dim, codes) in enumerate(panels):
            ax = axes[r][c]
            codes = np.asarray(codes, dtype=np.float64)
            if dim == 1:
                ax.scatter(codes[:, 0], labels + jitter, c=colors, s=1.5, alpha=0.5, linewidths=0,
                           rasterized=True)
                ax.set_yticks(range(len(names)), names if len(names) <= 10 else None)
                ax.set_ylabel(what)
                ax.set_xlabel("code c")
            else:
                ax.scatter(codes[:, 0], codes[:, 1], c=colors, s=1.5, alpha=0.5, linewidths=0, rasterized=True)
                ax.set_xlabel("c₁")
                ax.set_ylabel("c₂")
            ax.set_title(f"{label}, z={dim}", fontsize=10)
            ax.grid(alpha=0.3)
    cmap = matplotlib.colormaps[DIGIT_COLORS]
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", color=cmap(d % 10), label=name)
               for d, name in enumerate(names)]
    if handles:
        fig.legend(handles=handles, loc="outside upper center", ncols=min(10, len(handles)), title=what, fontsize=9)
    save_figure(fig, path)


def manifold(panels: list[tuple[str, dict[int, torch.Tensor]]], quantiles: torch.Tensor, path: str | Path, *,
             shape: tuple[int, int, int] = (1, 28, 28)) -> None:
    """Decodes at the Gaussian quantiles `quantiles` (K,) per model: {2: (K*K, C·H·W) grid, row-major with
    c₂ decreasing down the rows and c₁ increasing along them; 1: (K, C·H·W) strip}. One column per model."""
    k = len(quantiles)
    fig = Figure(figsize=(5.6 * len(panels), 7.0), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, height_ratios=[k, 1.6])
    _, h, w = shape
    pad = 2
    centers = [pad + i * (w + pad) + w / 2 for i in range(k)]
    rows = [pad + i * (h + pad) + h / 2 for i in range(k)]
    ticks = sorted({0, k // 4, k // 2, k - 1 - k // 4, k - 1})  # symmetric, as the quantiles are
    q = [f"{float(v):.2f}" for v in quantiles]
    for c, (label, decodes) in enumerate(panels):
        top, bottom = axes[0][c], axes[1][c]
        for ax in (top, bottom):
            ax.set_axis_off()
        if 2 in decodes:
            top.set_axis_on()
            show(top, tile(decodes[2], nrow=k, shape=shape))
            top.set_xticks([centers[i] for i in ticks], [q[i] for i in ticks])
            top.set_yticks([rows[i] for i in ticks], [q[k - 1 - i] for i in ticks])
            top.set_xlabel("c₁")
            top.set_ylabel("c₂")
            top.set_title(f"{label}, z=2", fontsize=10)
        if 1 in decodes:
            bottom.set_axis_on()
            show(bottom, tile(decodes[1], nrow=k, shape=shape))
            bottom.set_xticks([centers[i] for i in ticks], [q[i] for i in ticks])
            bottom.set_yticks([])
            bottom.set_xlabel("c")
            bottom.set_title(f"{label}, z=1", fontsize=10)
    save_figure(fig, path)


def interpolation(first: torch.Tensor, last: torch.Tensor, rows: list[tuple[str, torch.Tensor]],
                  path: str | Path, *, mid_index: int, classes: tuple | None,
                  shape: tuple[int, int, int] = (1, 28, 28), what: str = "test digits") -> None:
    """Decodes along the line from α1 to α2 (one row (S, C·H·W) per model), the two test images above
    them at the ends (labelled with their `classes`, if given), and the midpoint (α1 + α2)/2 (column
    `mid_index`) framed in red."""
    n = len(rows[0][1])
    header = torch.full((n, first.numel()), float("nan"))
    header[0], header[-1] = first, last
    what = f"{what} ({classes[0]}, {classes[1]})" if classes is not None else what
    fig, ax, grid = _image_rows([(what, header), *rows], ncols=n, top=0.35, shape=shape)
    _, h, w = shape
    pad = 2
    x0 = pad + mid_index * (w + pad) - 1.5
    y0 = pad + (h + pad) - 1.5
    ax.add_patch(matplotlib.patches.Rectangle((x0, y0), w + 2, grid.shape[0] - y0 - pad + 0.5, fill=False,
                                              ec="red", lw=1.8))
    ax.set_xticks([pad + i * (w + pad) + w / 2 for i in (0, mid_index, n - 1)],
                  ["α1", "(α1 + α2)/2", "α2"])
    ax.xaxis.tick_top()
    save_figure(fig, path)
