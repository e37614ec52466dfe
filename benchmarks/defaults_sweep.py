"""The measurements behind vaelab's training defaults: validation loss and wall time over a grid.

Run on demand (not in CI):
    VAELAB_DATA=../shared/data .venv/bin/python benchmarks/defaults_sweep.py \
        --batch-size 128,256,512 --lr 1e-3,2e-3,4e-3
Each cell trains the paper's model (VAE, paper objective, latent 2, dynamic binarization) for --epochs
epochs, once per seed, and prints the minimal validation loss (nats/image, mean over seeds) and the
seconds per epoch. Runs one after another, so the timings compare on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path

import torch

from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.device import cpu_model
from vaelab.training import train


def numbers(text: str, kind: type) -> list:
    return [kind(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", default="128", help="comma-separated values")
    parser.add_argument("--lr", default="1e-3", help="comma-separated values")
    parser.add_argument("--hidden", default="512,256", help="';'-separated width lists, e.g. '512,256;256,128'")
    parser.add_argument("--lr-schedule", default="constant", help="comma-separated values (constant, cosine)")
    parser.add_argument("--model", default="vae", help="vae or autoencoder")
    parser.add_argument("--objective", default="paper")
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0", help="comma-separated values")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--valid-size", type=int, default=RunConfig.valid_size,
                        help="held-out images (the last of the official training set)")
    args = parser.parse_args()
    data = load_data(RunConfig(valid_size=args.valid_size), args.data_dir)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; {args.model}, {args.objective} objective, "
          f"latent {args.latent_dim}, {args.epochs} epochs, seeds {args.seeds}")
    print(f"{'hidden':>10} {'batch':>6} {'lr':>7} {'schedule':>9} {'min valid loss':>15} {'sd':>5} "
          f"{'s/epoch':>8}  per seed")
    cells = itertools.product(args.hidden.split(";"), numbers(args.batch_size, int), numbers(args.lr, float),
                              args.lr_schedule.split(","))
    for hidden, batch_size, lr, schedule in cells:
        losses, seconds = [], []
        for seed in numbers(args.seeds, int):
            config = RunConfig(model=args.model, objective=args.objective, latent_dim=args.latent_dim,
                               hidden=tuple(numbers(hidden, int)), epochs=args.epochs,
                               batch_size=batch_size, lr=lr, lr_schedule=schedule, seed=seed,
                               valid_size=args.valid_size)
            with tempfile.TemporaryDirectory() as tmp:
                result = train(config, Path(tmp) / "run", data=data, progress=False, log=lambda _: None)
                timing = (Path(tmp) / "run" / "timing.jsonl").read_text().splitlines()
            losses.append(result.best_valid_loss)
            seconds += [json.loads(line)["seconds"] for line in timing]
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        print(f"{hidden:>10} {batch_size:>6} {lr:>7g} {schedule:>9} {statistics.mean(losses):15.2f} {sd:5.2f} "
              f"{statistics.median(seconds):8.2f}  {' '.join(f'{v:.2f}' for v in losses)}", flush=True)


if __name__ == "__main__":
    main()
