"""What flushing subnormal floats (device.subnormals_flushed) does to training speed, on this CPU.

Run on demand (not in CI):
    VAELAB_DATA=../shared/data .venv/bin/python benchmarks/subnormal_flush.py [--epochs 30] [--repeats 2]
Trains the default VAE (paper objective, latent 2, batch 128) with the flush and without it, in turn
(flushed, not, flushed, not, ...) in one process so that a drift in the machine's speed hits both alike;
"without" replaces the trainer's context manager by a no-op. Prints each run's wall time, its epochs'
seconds and its last validation loss (the flush must not move it), then the ratio of the medians.
Subnormals appear from about step 700 on (Adam's moments of dead ReLU units): use >= 3 epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaelab import training
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.device import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=RunConfig.epochs)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--valid-size", type=int, default=RunConfig.valid_size)
    args = parser.parse_args()
    config = RunConfig(model="vae", objective="paper", latent_dim=2, epochs=args.epochs, valid_size=args.valid_size)
    data = load_data(config, args.data_dir)
    print(f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.epochs} epochs at batch {min(config.batch_size, len(data.train))}, {len(data.train)} images")
    flushing = training.subnormals_flushed
    seconds: dict[bool, list[float]] = {True: [], False: []}
    try:
        for flush in [True, False] * args.repeats:
            training.subnormals_flushed = flushing if flush else contextlib.nullcontext
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                training.train(config, Path(tmp) / "run", data=data, progress=False, log=lambda _: None)
                total = time.perf_counter() - started
                timing = (Path(tmp) / "run" / "timing.jsonl").read_text().splitlines()
                epochs = [json.loads(line)["seconds"] for line in timing]
                last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
            seconds[flush].append(total)
            print(f"{'flushed' if flush else 'not flushed':12} {total:7.1f} s; epochs {min(epochs):.2f}-"
                  f"{max(epochs):.2f} s; last valid loss {last['valid_loss']:.4f}", flush=True)
    finally:
        training.subnormals_flushed = flushing
    ratio = statistics.median(seconds[False]) / statistics.median(seconds[True])
    print(f"not flushed / flushed (median wall time): {ratio:.2f}x")


if __name__ == "__main__":
    main()
