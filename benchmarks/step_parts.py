"""A training step taken apart by subtraction: what each part adds to the matmuls, without a profiler.

Run on demand (not in CI):  VAELAB_DATA=../shared/data .venv/bin/python benchmarks/step_parts.py
At the default VAE and batch (or --batch-size), on the trainer's own model, kernel, optimizer and objective,
times per step, as seconds per epoch of training steps (validation and checkpoints left out):
  1. the layers' products alone: each of the forward, weight-gradient and input-gradient products timed by
     itself over and over (warm caches; what train_speed.py calls the ceiling);
  2. the same products in a step's order (every layer forward, then every layer backward), raw torch.mm
     or oneDNN on fixed tensors: 2 minus 1 is what a layer's inputs and weights coming cold costs;
  3. forward and backward through autograd with the objective (fixed images and noise), no optimizer;
  4. 3 plus Adam's step;
  5. the trainer's whole step (`training.take_step`): 4 plus the batch gather, the binarization and noise
     draws, the schedules and the loss sums.
The five are timed in turn, round after round (--rounds), and each keeps its fastest round, so that load
from other processes falls on all of them alike. Subnormals are flushed as the trainer flushes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time

import torch

from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.device import cpu_model, keep_freed_memory, subnormals_flushed
from vaelab.distributed import World
from vaelab.linear import ONEDNN_MIN_WIDTH, onednn_available, onednn_linear, set_kernel
from vaelab.models import init_model
from vaelab.objectives import noise_shape, objective_function
from vaelab.training import ObjectiveStep, machine_kernel, make_optimizer, take_step


def products(model: torch.nn.Module, kernel: str, batch: int) -> list[tuple]:
    """(matmul, a, b) of a step's products in the order a step asks for them, on tensors of their shapes."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    generator = torch.Generator().manual_seed(0)
    forward, backward = [], []
    for i, layer in enumerate(layers):
        w = layer.weight.detach().clone()  # (out, in)
        onednn = kernel == "onednn" and min(w.shape) >= ONEDNN_MIN_WIDTH and onednn_available()
        mm = (lambda a, b: onednn_linear(a, b.t())) if onednn else torch.mm
        x = torch.randn(batch, w.shape[1], generator=generator)
        g = torch.randn(batch, w.shape[0], generator=generator)
        forward.append((mm, x, w.t()))
        backward.insert(0, (mm, g.t(), x))  # the weight gradient
        if i:  # the first layer's input is data: no input gradient
            backward.insert(1, (mm, g, w))
    return forward + backward


def timed(fn, steps: int) -> float:
    """Seconds per call of `fn`, over `steps` calls after one to warm up."""
    fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=RunConfig.batch_size)
    parser.add_argument("--valid-size", type=int, default=RunConfig.valid_size)
    parser.add_argument("--objective", default=RunConfig.objective, help="[default: the trainer's, %(default)s]")
    parser.add_argument("--k", type=int, default=RunConfig.k, help="samples per image for --objective iwae "
                        "[default: %(default)s]")
    parser.add_argument("--steps", type=int, default=50, help="steps per timing [default: 50]")
    parser.add_argument("--rounds", type=int, default=7, help="the five parts timed in turn this many times, "
                        "the fastest round of each kept [default: 7]")
    args = parser.parse_args()
    config = dataclasses.replace(RunConfig(), batch_size=args.batch_size, valid_size=args.valid_size,
                                 objective=args.objective, k=args.k)
    data = load_data(config, args.data_dir)
    kernel = machine_kernel()
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    objective_said = config.objective + (f" (k={config.k})" if config.objective == "iwae" else "")
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"linear kernel {kernel}; objective {objective_said}; batch {config.batch_size}, "
          f"hidden {','.join(map(str, config.hidden))}, "
          f"{steps_per_epoch} steps an epoch")
    keep_freed_memory()
    model = init_model(config)
    set_kernel(model, kernel)
    optimizer = make_optimizer(model, config.lr)
    objective = objective_function(config.objective, k=config.k)
    generator = torch.Generator().manual_seed(config.seed)
    idx = torch.randperm(len(data.train), generator=generator)[:config.batch_size]
    x = data.train_batch(idx, generator)
    shape = noise_shape(config.objective, config.batch_size, config.latent_dim, k=config.k)
    noise = None if shape is None else torch.randn(shape, generator=generator)
    sums = torch.zeros(3, dtype=torch.float64)
    ordered = products(model, kernel, config.batch_size)

    def in_order() -> None:
        for mm, a, b in ordered:
            mm(a, b)

    def autograd() -> None:
        loss = objective(model, x, beta=config.beta, noise=noise)["loss"].sum() / config.batch_size
        model.zero_grad(set_to_none=True)
        loss.backward()

    def with_adam() -> None:
        autograd()
        optimizer.step()

    trainer_step, world = ObjectiveStep(model, objective), World()

    def whole() -> None:
        i = torch.randint(len(data.train), (config.batch_size,), generator=generator)
        take_step(config, trainer_step, optimizer, data, i, generator, global_step=0, steps_per_epoch=steps_per_epoch,
                  world=world, sums=sums)

    parts = {"in_order": in_order, "autograd": autograd, "with_adam": with_adam, "whole": whole}
    rounds: dict[str, list[float]] = {name: [] for name in ["alone", *parts]}
    with subnormals_flushed():
        for _ in range(args.rounds):
            rounds["alone"].append(sum(timed(lambda p=p: p[0](p[1], p[2]), args.steps) for p in ordered))
            for name, fn in parts.items():
                rounds[name].append(timed(fn, args.steps))
    labels = {"alone": "1. products, each alone (warm)", "in_order": "2. products in a step's order",
              "autograd": "3. forward + backward (autograd, objective)", "with_adam": "4. ... + Adam",
              "whole": "5. the trainer's whole step (+ gather, draws, sums)"}
    print(f"fastest of {args.rounds} rounds of {args.steps} steps each (and the median round); seconds per epoch "
          "of training steps:")
    previous = None
    for name, times in rounds.items():
        seconds, median = min(times), statistics.median(times)
        added = "" if previous is None else f"  ({(seconds - previous) * steps_per_epoch:+.2f})"
        print(f"  {labels[name]:52} {seconds * steps_per_epoch:6.2f} s/epoch  {seconds * 1e3:6.2f} ms/step{added:9}"
              f"  median {median * steps_per_epoch:6.2f} s/epoch")
        previous = seconds


if __name__ == "__main__":
    main()
