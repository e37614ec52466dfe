"""What `--precision bfloat16` does: epoch time, validation loss and exact test NLL against float32, over seeds.

Run on demand (not in CI), on a CPU with native bfloat16 (AVX-512 BF16 or AMX):
    VAELAB_DATA=../shared/data .venv/bin/python benchmarks/precision_study.py \
        [--epochs 20] [--seeds 3] [--batch-size 512]
Trains the default VAE (paper objective, latent 2, the paper's budget) once per seed and precision, in one
process, alternating the two so that a drift in the machine's speed hits both alike. Each run's best
checkpoint is then scored by `vaelab evaluate` in float32 (validation loss, exact test NLL), so the two
precisions are compared on the same arithmetic; the validation loss each run logged (in its own precision)
is printed too. Seconds per epoch: the median over epochs 2..E (validation and checkpoint included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.device import cpu_model, native_bfloat16
from vaelab.evaluate import evaluate_run
from vaelab.training import machine_kernel, train

PRECISIONS = ("float32", "bfloat16")


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=RunConfig.epochs)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=RunConfig.batch_size)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if not native_bfloat16(torch.device("cpu")):
        raise SystemExit(f"{cpu_model()} has no native bfloat16 (AVX-512 BF16 or AMX): nothing to compare")
    data = load_data(RunConfig(), args.data_dir)
    print(f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"linear kernel {machine_kernel()}; default VAE (paper objective, latent 2), batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.seeds} seeds")
    rows: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for precision in PRECISIONS:
                config = RunConfig(epochs=args.epochs, seed=seed, precision=precision, batch_size=args.batch_size)
                run = Path(tmp) / f"{precision}-s{seed}"
                result = train(config, run, data=data, progress=False, log=lambda _: None)
                seconds = [json.loads(line)["seconds"] for line in (run / "timing.jsonl").read_text().splitlines()]
                scored = evaluate_run(run, data=data, device="cpu", nll="exact", log=lambda _: None, bar=False)
                record = {"logged_valid": result.best_valid_loss, "valid": scored["valid"]["loss"],
                          "exact_nll": scored["likelihood"]["exact"]["nll"],
                          "seconds": statistics.median(seconds[1:] or seconds)}
                rows[precision].append(record)
                print(f"  seed {seed} {precision:8}: valid loss {record['valid']:.2f} (float32; logged "
                      f"{record['logged_valid']:.2f}), test exact NLL {record['exact_nll']:.2f}, "
                      f"{record['seconds']:.2f} s/epoch", flush=True)
    print("\n| precision | best valid loss (float32) | as logged | test exact NLL | s/epoch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for precision in PRECISIONS:
        r = rows[precision]
        print(f"| {precision} | {mean_sd([x['valid'] for x in r])} | {mean_sd([x['logged_valid'] for x in r])} | "
              f"{mean_sd([x['exact_nll'] for x in r])} | {mean_sd([x['seconds'] for x in r])} |")
    speed = statistics.mean(x["seconds"] for x in rows["float32"]) / statistics.mean(
        x["seconds"] for x in rows["bfloat16"])
    shift = statistics.mean(x["valid"] for x in rows["bfloat16"]) - statistics.mean(
        x["valid"] for x in rows["float32"])
    print(f"\nbfloat16: {speed:.2f}x float32's speed per epoch (target >= 1.5x); validation loss "
          f"{shift:+.2f} nats (target within 0.5)")


if __name__ == "__main__":
    main()
