"""The latent explorer: one self-contained HTML page that decodes codes live in the browser.

The page embeds each run's decoder (an MLP: Linear + ReLU layers, then Linear to Bernoulli logits,
sigmoid -> mean image; `models.Decoder`) and the test set's codes, and runs the decoder's forward
pass in plain JavaScript (`explorer.html`), so it works from file:// with no network at all. The
planes show the paper's latent space; a straight path between two test images' codes is the
full-moon / half-moon interpolation of the paper, decoded per run.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .api import load_run
from .data import load_images
from .runfiles import atomic_write

N_POINTS = 3000  # test images whose codes the page embeds (the first N): ~36 KB per latent-2 run
MAX_FLOAT32_BYTES = 4 * 2**20  # above this page size the weights are embedded as float16 instead
PRECISIONS = ("auto", "float32", "float16")
TEMPLATE = "explorer.html"  # package data beside this module
DATA_MARK = "/*__VAELAB_DATA__*/null"  # where the template takes the JSON payload
MODEL_NAMES = {("autoencoder", "reconstruction"): "autoencoder", ("vae", "paper"): "VAE (paper)",
               ("vae", "elbo"): "VAE (ELBO)"}


class ExplorerError(ValueError):
    """Runs that cannot be shown (PCA, or runs that do not share one latent space and test set)."""


@dataclasses.dataclass
class Loaded:
    """What the page needs from one run, in plain tensors (all on the CPU)."""

    run_dir: Path
    decoder: nn.Module  # code (N, D) -> logits (N, P)
    model: str  # "autoencoder" | "vae"
    objective: str
    latent_dim: int
    dataset: str
    seed: int
    codes: torch.Tensor  # (N, D) float32: the deterministic code (m for a VAE) of the first N test images
    labels: torch.Tensor  # (N,) int64
    # a learned prior as the mixture of K diagonal Gaussians it is: means and standard deviations (K, D)
    # float32; None for N(0, I) (and for the autoencoder, whose reference is N(0, I) too)
    prior: tuple[torch.Tensor, torch.Tensor] | None = None


# --- the one place that reaches into vaelab (switches to the public API at merge) -----------------

def _load(run_dir: Path, *, data_dir: str | Path | None, device: str, n_points: int,
          check: Callable[[Path, str, str, int], None]) -> Loaded:
    """Load a run's model and config, call check(run_dir, model, dataset, latent_dim) (which raises to
    refuse the run before any data is read), then encode its first `n_points` test images."""
    run = load_run(run_dir, device)
    c = run.config
    check(run_dir, c.model, c.dataset, c.latent_dim)
    # the test images as the run was evaluated on them (binarized once, or grayscale)
    x, labels = load_images(c.dataset, "test", binarize=c.binarize, data_dir=data_dir, valid_size=c.valid_size,
                            eval_seed=c.eval_seed)
    codes = run.encode(x[:n_points]).float().cpu()  # (N, D)
    prior = None
    if c.model == "vae" and run.model.prior.kind != "standard":
        with torch.no_grad():
            means, logvars = run.model.prior.components(run.model)
        prior = (means.float().cpu(), (0.5 * logvars).exp().float().cpu())
    return Loaded(run_dir=Path(run_dir), decoder=run.model.decoder.cpu(), model=c.model, objective=c.objective,
                  latent_dim=c.latent_dim, dataset=c.dataset, seed=c.seed, codes=codes,
                  labels=labels[:n_points].clone(), prior=prior)


# --- the decoder as plain arrays -------------------------------------------------------------------

def decoder_layers(decoder: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The decoder's nn.Linear layers in order as (weight (out, in), bias (out,)) float32 CPU tensors.

    The page computes h = relu(W h + b) for all but the last layer and sigmoid(W h + b) at the end;
    `mlp_decode` checks that this reproduces the module (refusing any other structure).
    """
    layers = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ExplorerError("this decoder has no linear layers; the explorer shows MLP decoders only")
    return [(m.weight.detach().float().cpu(), m.bias.detach().float().cpu()) for m in layers]


def mlp_decode(layers: list[tuple[torch.Tensor, torch.Tensor]], z: torch.Tensor) -> torch.Tensor:
    """The page's forward pass in torch: codes z (N, D) -> mean images (N, P) in [0, 1]."""
    h = z.float()
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight.T + bias  # (N, out)
        if i < len(layers) - 1:
            h = h.relu()
    return torch.sigmoid(h)


def _check_mlp(item: Loaded, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Refuse a decoder that is not Linear/ReLU/.../Linear: the page would decode it wrongly."""
    z = torch.randn(8, item.latent_dim, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        expected = torch.sigmoid(item.decoder(z))
    if expected.shape != (8, layers[-1][0].shape[0]) or not torch.allclose(mlp_decode(layers, z), expected,
                                                                          atol=1e-5):
        raise ExplorerError(f"{item.run_dir}: its decoder is not a plain MLP (Linear + ReLU, then Linear); "
                            "the explorer cannot show it")


# --- the page ----------------------------------------------------------------------------------------

def _b64(array: np.ndarray) -> str:
    """Little-endian bytes of an array, base64 (what the page's typed arrays read)."""
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def label(item: Loaded) -> str:
    return f"{MODEL_NAMES.get((item.model, item.objective), item.model)}, z={item.latent_dim}, seed {item.seed}"


def payload(items: list[Loaded], precision: str) -> dict:
    """The JSON the page reads: per run its label, codes (N·D float32), learned prior (or null) and layers;
    labels once."""
    dtype = np.float16 if precision == "float16" else np.float32
    runs = []
    for item in items:
        layers = decoder_layers(item.decoder)
        _check_mlp(item, layers)
        runs.append({
            "label": label(item),
            "path": str(item.run_dir),
            "codes": _b64(item.codes.numpy().astype(np.float32)),
            "prior": None if item.prior is None else {
                "k": len(item.prior[0]), "means": _b64(item.prior[0].numpy().astype(np.float32)),
                "stds": _b64(item.prior[1].numpy().astype(np.float32))},
            "layers": [{"in": w.shape[1], "out": w.shape[0], "weight": _b64(w.numpy().astype(dtype)),
                        "bias": _b64(b.numpy().astype(dtype))} for w, b in layers],
        })
    first = items[0]
    return {"precision": precision, "dataset": first.dataset, "latent_dim": first.latent_dim,
            "image_side": int(round(layers[-1][0].shape[0] ** 0.5)), "n_points": len(first.labels),
            "labels": _b64(first.labels.numpy().astype(np.uint8)), "runs": runs}


def render(data: dict) -> str:
    """The page: the template with the payload inlined (`</` escaped so no string ends the script)."""
    template = resources.files("vaelab").joinpath(TEMPLATE).read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    if DATA_MARK not in template:
        raise RuntimeError(f"{TEMPLATE} lacks its data mark {DATA_MARK!r}")
    return template.replace(DATA_MARK, blob)


def _finite_in_float16(items: list[Loaded]) -> bool:
    return all(bool(torch.isfinite(t.half()).all()) for item in items for w, b in decoder_layers(item.decoder)
               for t in (w, b))


def build_page(items: list[Loaded], precision: str = "auto") -> str:
    """The HTML of the explorer for loaded runs. precision: "float32", "float16", or "auto": float32
    unless the page would exceed MAX_FLOAT32_BYTES (then float16, if every weight fits in it)."""
    if precision not in PRECISIONS:
        raise ExplorerError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    page = render(payload(items, "float32" if precision == "auto" else precision))
    if precision == "auto" and len(page.encode()) > MAX_FLOAT32_BYTES and _finite_in_float16(items):
        page = render(payload(items, "float16"))
    return page


def load_runs(run_dirs: list[str | Path], *, data_dir: str | Path | None = None, device: str = "auto",
              n_points: int = N_POINTS) -> list[Loaded]:
    """Load every run, refusing PCA runs and runs that do not share the first one's dataset and
    latent dimension (the planes share one pointer in latent coordinates, and one test set)."""
    if not run_dirs:
        raise ExplorerError("give at least one run directory")
    if n_points < 2:
        raise ExplorerError(f"--points must be >= 2, got {n_points}")
    first: dict = {}

    def check(run_dir: Path, model: str, dataset: str, latent_dim: int) -> None:
        if model not in ("autoencoder", "vae"):
            raise ExplorerError(f"{run_dir} is a {model} run; the explorer shows autoencoder and VAE runs "
                                "(their decoders are neural networks)")
        first.setdefault("run", (run_dir, dataset, latent_dim))
        run0, dataset0, dim0 = first["run"]
        if dataset != dataset0:
            raise ExplorerError(f"{run_dir} was trained on {dataset} but {run0} on {dataset0}; one page shows "
                                "runs of one dataset (they share the test images)")
        if latent_dim != dim0:
            raise ExplorerError(f"{run_dir} has latent dimension {latent_dim} but {run0} has {dim0}; runs side "
                                "by side share one pointer in latent coordinates, so they need the same dimension")

    return [_load(Path(r), data_dir=data_dir, device=device, n_points=n_points, check=check) for r in run_dirs]


def write_explorer(out: str | Path, run_dirs: list[str | Path], *, data_dir: str | Path | None = None,
                   device: str = "auto", n_points: int = N_POINTS, precision: str = "auto") -> Path:
    """Write the explorer page for `run_dirs` to `out`; returns the path."""
    page = build_page(load_runs(run_dirs, data_dir=data_dir, device=device, n_points=n_points), precision)
    return write_page(out, page)


def check_output(out: str | Path) -> None:
    """ValueError unless `out` names an HTML file (the page is HTML whatever the name says) that is
    not a directory; checked before any work."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{out}: the explorer writes an HTML page; end the file name in .html")
    if out.is_dir():
        raise ValueError(f"{out} is a directory; give a file name such as {out / 'explorer.html'}")


def write_page(out: str | Path, page: str) -> Path:
    """Write the page atomically (a reader never sees half a file); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, page.encode())
    return out


# --- --serve -----------------------------------------------------------------------------------------

def make_server(page: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 only (never all interfaces) that answers every GET with the page;
    port 0 lets the OS pick a free one (server.server_address has it)."""
    body = page.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # quiet: the address was printed once
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(page: str, echo: Callable[[str], None], port: int = 0) -> None:
    """Serve the page until Ctrl-C, after printing its address."""
    server = make_server(page, port)
    host, port = server.server_address[:2]
    echo(f"serving the explorer at http://{host}:{port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        server.server_close()


def serve_in_thread(page: str) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    """For tests and notebooks: serve in a daemon thread; stop with server.shutdown()."""
    server = make_server(page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
