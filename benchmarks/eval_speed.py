"""Seconds to evaluate the likelihoods of a latent-2 VAE on the MNIST test set.

Run on demand (not in CI):  VAELAB_DATA=../shared/data .venv/bin/python benchmarks/eval_speed.py [--run DIR]
Without --run, a latent-2 VAE (ELBO, 784-512-256-2) is first trained for --epochs epochs in a
temporary directory. Times the exact NLL by tiled quadrature on --images test images and IWAE_k on
the same images, and prints the matmul rate of this machine for scale (both are matmul-bound: IWAE
decodes images x k codes, ~1.07 MFLOP each). Targets on 2 CPU cores (issue 4, item 7): exact NLL of
10k images <= 30 s; IWAE with k = 1000 on 10k images <= 90 s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from vaelab.checkpoint import load_trained
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.likelihood import exact_nll, importance_sampled
from vaelab.training import train

TARGETS = {"exact_seconds": 30.0, "iwae_seconds": 90.0}  # for 10k images and k = 1000


def matmul_gflops(seconds: float = 2.0) -> float:
    """float32 GFLOP/s of a (4096, 512) @ (512, 784) product, the shape of the decoder's last layer."""
    a, b = torch.randn(4096, 512), torch.randn(512, 784)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 4096 * 512 * 784 * count / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a trained latent-2 VAE run directory")
    parser.add_argument("--epochs", type=int, default=5, help="epochs for the VAE trained without --run")
    parser.add_argument("--images", type=int, default=10000, help="test images to evaluate")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per image")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "vae-z2"
            config = RunConfig(model="vae", objective="elbo", latent_dim=2, epochs=args.epochs)
            started = time.perf_counter()
            train(config, run, progress=False, log=lambda _: None)
            print(f"trained {run.name} for {args.epochs} epochs in {time.perf_counter() - started:.0f} s")
        model, config, _ = load_trained(run, "cpu")
        if config.model != "vae" or config.latent_dim != 2:
            raise SystemExit(f"{run}: need a latent-2 VAE, got {config.model} with latent {config.latent_dim}")
        x = load_data(config).test[:args.images]
        rate = matmul_gflops()

        started = time.perf_counter()
        exact = exact_nll(model, x, objective=config.objective)
        exact_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sampled = importance_sampled(model, config.objective, x, k=args.k, seed=config.eval_seed)
        iwae_seconds = time.perf_counter() - started

    scale = 10000 / len(x)  # the targets are for 10k images (and k = 1000 for IWAE)
    iwae_scale = scale * 1000 / args.k
    decoder_flops = 2 * sum(m.weight.numel() for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
    result = {
        "images": len(x), "k": args.k, "matmul_gflops": round(rate, 1),
        "exact_nll": round(float(exact.nll.mean()), 3), "exact_seconds": round(exact_seconds, 2),
        "exact_grid": exact.grid,
        "iwae_nll": round(float(sampled["iwae"].mean()), 3), "iwae_seconds": round(iwae_seconds, 2),
        "iwae_decoder_gflops": round(decoder_flops * len(x) * args.k / iwae_seconds / 1e9, 1),
        "neg_elbo": round(float(sampled["neg_elbo"].mean()), 3),
    }
    print(json.dumps(result, indent=2))
    for key, value in (("exact_seconds", exact_seconds * scale), ("iwae_seconds", iwae_seconds * iwae_scale)):
        verdict = "meets" if value <= TARGETS[key] else "MISSES"
        print(f"{key.replace('_seconds', '')}: {value:.1f} s for 10k images"
              f"{' with k = 1000' if key == 'iwae_seconds' else ''} (scaled from {len(x)} images): "
              f"{verdict} the target of {TARGETS[key]:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
