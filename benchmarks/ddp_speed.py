"""Data-parallel training: one process vs N torchrun processes on this machine, side by side.

Run on demand (not in CI):  VAELAB_DATA=../shared/data .venv/bin/python benchmarks/ddp_speed.py [--procs 2]
Trains the same run (default VAE, latent 2) for --epochs epochs once with one process using every
core and once with `torchrun --nproc-per-node N` (one thread per process, torchrun's default), then
prints the median epoch time of each (epochs after the first; validation and checkpoint included),
their ratio, the validation losses and the largest relative parameter difference. On a machine with
C cores, N processes share the same C cores as the one process: DDP cannot be faster there, it adds
the gradient all-reduce. It pays off across machines or GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.device import cpu_model
from vaelab.runfiles import read_metrics


def train(command: list[str], out: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command + ["--out", str(out)], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def epoch_seconds(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "timing.jsonl").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in lines[1:] or lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    train_args = ["train", "--model", "vae", "--latent-dim", "2", "--epochs", str(args.epochs)]
    cores = os.cpu_count() or 1
    print(f"{cpu_model()}, {cores} cores; 1 process x {cores} threads vs {args.procs} processes x 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        wall_one = train([sys.executable, "-m", "vaelab", *train_args], one, {**os.environ})
        wall_many = train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(args.procs), "-m", "vaelab", *train_args], many,
                          {**os.environ, "OMP_NUM_THREADS": "1"})
        a, b = (load_tensors(checkpoint_paths(r)[0])[0] for r in (one, many))
        worst = max(float((a[k].double() - b[k].double()).norm() / a[k].double().norm().clamp_min(1e-30))
                    for k in a if k.startswith("model."))
        e_one, e_many = epoch_seconds(one), epoch_seconds(many)
        v_one, v_many = (read_metrics(r)[-1]["valid_loss"] for r in (one, many))
    print(f"1 process:    {e_one:6.2f} s per epoch ({wall_one:.1f} s wall with start-up), valid loss {v_one:.3f}")
    print(f"{args.procs} processes:  {e_many:6.2f} s per epoch ({wall_many:.1f} s wall with start-up), "
          f"valid loss {v_many:.3f}")
    print(f"ratio (1 process / {args.procs} processes): {e_one / e_many:.2f}x; validation loss difference "
          f"{abs(v_one - v_many):.3f} nats; largest relative parameter difference {worst:.2e}")


if __name__ == "__main__":
    main()
