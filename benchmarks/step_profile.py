"""Where a training epoch's time goes: torch.profiler over vaelab's own trainer, ops grouped by role.

Run on demand (not in CI):  VAELAB_DATA=../shared/data .venv/bin/python benchmarks/step_profile.py
Trains the default VAE (paper objective, latent 2), or a preset's model (--preset z2-best: IWAE k = 5, the
VampPrior, batch 512), for --epochs epochs under the profiler and prints, over those epochs, the CPU time of
each group of operators (self time, so nothing is counted twice) as seconds and as a share: the matmuls
(forward and backward), the activations, the binarization and noise draws, the loss's elementwise work
(forward and backward), the optimizer, gathers and copies, and other operators; --flops adds the matmuls'
FLOP count and rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vaelab.config import PRESETS, RunConfig, parse_hidden
from vaelab.data import load_data
from vaelab.device import cpu_model
from vaelab.training import machine_kernel, train

# operator name fragments -> group (first match wins, so ReLU's clamp_min is an activation, not the loss's clamp;
# names are torch's aten / mkldnn operators)
GROUPS = [
    ("matmuls", ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear", "aten::matmul",
                 "aten::bmm")),
    ("optimizer (Adam)", ("_fused_adam", "aten::_foreach", "Optimizer.step", "aten::adam")),
    ("binarization draw (rand < p)", ("aten::uniform_", "aten::rand", "aten::lt")),
    ("noise draw (randn)", ("aten::normal_", "aten::randn")),
    ("activations (ReLU fwd/bwd)", ("aten::relu", "aten::threshold", "aten::clamp_min")),
    ("loss elementwise (BCE, penalty, sums)", ("binary_cross_entropy", "aten::exp", "aten::sum", "aten::mul",
                                               "aten::add", "aten::sub", "aten::pow", "aten::square", "aten::softplus",
                                               "aten::log", "aten::div", "aten::neg", "aten::sigmoid",
                                               "aten::clamp", "aten::mean", "aten::rsub", "vecdot", "_BernoulliNLL",
                                               "aten::max", "aten::amax")),
    ("batch gather and copies", ("aten::index", "aten::copy_", "aten::cat", "aten::stack", "aten::to",
                                 "aten::contiguous", "aten::clone", "aten::empty", "aten::zeros", "aten::fill_")),
]


def group_of(name: str) -> str:
    for group, fragments in GROUPS:
        if any(f in name for f in fragments):
            return group
    return "other operators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="profile this preset's model, "
                        "objective, prior and batch instead of the default VAE (--epochs still applies)")
    parser.add_argument("--valid-size", type=int, default=RunConfig.valid_size)
    parser.add_argument("--hidden", default=None, help="hidden widths, e.g. 512,256 [default: the config's]")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the config's]")
    parser.add_argument("--flops", action="store_true", help="also count the matmuls' FLOPs and print their rate "
                        "(the profiler then records shapes, which slows every operator a little)")
    parser.add_argument("--top", type=int, default=0, help="also list the N operators of most self time, "
                        "each with its group")
    args = parser.parse_args()
    options = {"epochs": args.epochs, "precision": args.precision, "valid_size": args.valid_size}
    if args.hidden:
        options["hidden"] = parse_hidden(args.hidden)
    if args.batch_size:
        options["batch_size"] = args.batch_size
    config = RunConfig.from_preset(args.preset, **options) if args.preset else RunConfig(**options)
    objective = config.objective + (f" (k={config.k})" if config.objective == "iwae" else "")
    data = load_data(config, args.data_dir)
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"linear kernel {machine_kernel()}; precision {config.precision}; {config.preset or 'default VAE'}: "
          f"latent {config.latent_dim}, objective {objective}, prior {config.prior}, batch {config.batch_size}, hidden "
          f"{','.join(map(str, config.hidden))}, {len(data.train)} training images")
    profiler = profile(activities=[ProfilerActivity.CPU], with_flops=args.flops)
    with tempfile.TemporaryDirectory() as tmp, profiler as prof:
        started = time.perf_counter()
        train(config, Path(tmp) / "run", data=data, progress=False, log=lambda _: None)
        wall = time.perf_counter() - started
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        totals[group_of(event.key)] = totals.get(group_of(event.key), 0.0) + event.self_cpu_time_total / 1e6
    # threads run operators in parallel, so operator time can exceed wall time; shares are of operator time
    op_total = sum(totals.values())
    print(f"{args.epochs} epochs (validation and checkpoints included): {wall:.2f} s wall, {op_total:.2f} s of "
          "operator self time (summed over threads)")
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {group:40} {seconds:7.2f} s  {seconds / op_total:6.1%}")
    if args.flops:  # torch counts the FLOPs of its own mm / addmm, not those of oneDNN's linear op
        counted = [e for e in prof.key_averages() if group_of(e.key) == "matmuls" and e.flops]
        flops, seconds = sum(e.flops for e in counted), sum(e.self_cpu_time_total for e in counted) / 1e6
        share = seconds / totals.get("matmuls", float("inf"))
        print(f"matmuls with a FLOP count ({share:.0%} of the matmuls' time): " + (
            f"{flops / 1e9:.0f} GFLOP at {flops / 1e9 / seconds:.1f} GFLOP/s" if counted else "none"))
        print("(recording shapes for the count slows every operator, the small ones most: read the groups' times "
              "from a run without --flops)")
    if args.top:
        print(f"the {args.top} operators of most self time:")
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top]
        for event in events:
            print(f"  {event.key[:48]:48} {event.self_cpu_time_total / 1e6:7.2f} s  {event.count:7d} calls  "
                  f"({group_of(event.key)})")


if __name__ == "__main__":
    main()
