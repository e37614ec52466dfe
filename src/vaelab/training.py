"""Training: data as tensors in memory, shuffled minibatches, Adam, validation every epoch,
best and last checkpoints, exact resume.

All randomness of a run (shuffling, dynamic binarization, the VAE noise) comes from one
torch.Generator whose state is saved in every checkpoint, so 2 + 2 epochs equal 4 epochs bit for bit.
The KL warm-up and the learning-rate schedule are functions of the optimizer step (`kl_weight`,
`learning_rate`), so they resume exactly too.

Faults: a killed run resumes from its last checkpoint (files are written atomically); Ctrl-C saves a
mid-epoch checkpoint (with the epoch's permutation and partial sums) and stops; a second process
training in the same directory is refused (`checkpoint.run_lock`). σ is not clamped: a clamp would
change the paper objective wherever it binds and hide a diverging run. Instead the first non-finite
loss (exp(σ) overflows float32 above σ ≈ 88.7) stops training, naming epoch and step, before the
update reaches the weights or a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoint import (
    checkpoint_paths,
    load_tensors,
    load_training_state,
    run_progress,
    save_model,
    save_training_state,
)
from .config import PRECISIONS, ConfigError, RunConfig, check_data_size, check_options_apply
from .data import PixelData, cache_dir, load_data, with_source
from .device import cpu_model, keep_freed_memory, native_bfloat16, resolve_device, subnormals_flushed
from .distributed import World, join
from .linear import KERNEL_ENV, KERNELS, preferred_kernel, set_kernel
from .models import PCA, init_model
from .objectives import bits_per_dim, evaluate_objective, noise_shape, objective_function
from .runfiles import (
    MODEL_FILE,
    CheckpointError,
    append_timing,
    check_new_run_dir,
    check_not_in_use,
    load_config,
    read_metrics,
    remove_stale_temp_files,
    run_lock,
    save_config,
    write_json,
    write_metrics,
)

TERMS = ("loss", "reconstruction", "regularizer")  # per-example terms summed into the train_* metrics


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; the message names the epoch and step."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training after saving a checkpoint; the message says how to resume.

    Not a KeyboardInterrupt: typer would swallow that into a bare exit code, losing the message."""


class _StopRequest:
    """SIGINT handler for the training loop. The first Ctrl-C asks the loop to save a checkpoint at
    the next step boundary and stop; a second one interrupts at once (atomic writes keep files whole).
    It prints nothing: writing to stderr from a handler can collide with the progress bar's write."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _stop_on_sigint() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    # Only the main thread may set handlers; a process started with SIGINT ignored (nohup, a
    # background job) keeps ignoring it.
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield stop
        return
    signal.signal(signal.SIGINT, stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainResult:
    """What `train` / `resume` return: the run directory, epochs done (the run's total so far), the best
    validation epoch (None for a run with no epoch) and its loss (nats per image, the run's own
    objective), and the history: metrics.jsonl as a list of dicts, one per epoch."""

    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_valid_loss: float
    history: list[dict]
    target_epochs: int | None = None  # the run's recorded total (config.json's epochs); None for PCA


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam; the fused kernel (one pass over all parameters) where this torch build has it."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def kl_weight(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The regulariser's weight at optimizer step `step` (0-based, counted over the whole run): rises
    linearly per step from β/W at the first step to β at step W − 1, W = warmup epochs × steps per epoch
    (Bowman et al. 2016; Sønderby et al. 2016), then stays β. β from the first step without warm-up."""
    warmup_steps = config.warmup * steps_per_epoch
    if warmup_steps == 0:
        return config.beta
    return config.beta * min(1.0, (step + 1) / warmup_steps)


def learning_rate(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Adam's learning rate at optimizer step `step` (0-based): `constant` lr, or `cosine` lr·½(1 + cos(π·t/T))
    with T = epochs × steps per epoch (the run's configured total; resuming to a larger --epochs stretches
    the rest of the curve)."""
    if config.lr_schedule == "constant":
        return config.lr
    total = max(1, config.epochs * steps_per_epoch)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(config: RunConfig, out: str | Path, *, data: PixelData | None = None, data_dir: str | Path | None = None,
          device: str = "auto", progress: bool | None = None, log: Callable[[str], None] = _log,
          keep: Iterable[str] = ()) -> TrainResult:
    """Start a new run in directory `out` and train it.

    `config`: a RunConfig (model, objective, latent size, epochs, ...). `out`: a new or empty directory,
    or one whose run saved nothing (runfiles.check_new_run_dir); `keep` names other files it may hold.
    `data_dir`: where the dataset is looked up (the only place, when given). `device`: "auto" (CUDA,
    then MPS, then CPU), "cpu", "cuda" or "mps". `progress`: a tqdm bar per epoch (None: when stderr
    is a terminal); `log` gets one line per epoch. Writes config.json, checkpoints, model.safetensors
    (best validation epoch) and metrics.jsonl (losses in nats per image) to `out`. `data` may be passed
    in to share one in-memory copy between runs; otherwise it is loaded. Everything that can be checked
    (the directory, the data, the model's limits against them) is checked before anything is written.
    """
    out = Path(out)
    world, dev = join(resolve_device(device))  # under torchrun: this rank's place and device
    world.agree("configuration", config.to_dict())
    _check_world(config, world)
    check_precision(config.precision, dev)
    if world.main:
        try:
            check_new_run_dir(out, allowed=keep)  # a run still training there is reported as in use
        except BaseException as e:
            world.outcome(e)
            raise
    data = data if data is not None else load_data(config, data_dir)
    data.check()
    config = with_source(config, data)  # a folder or array source: record its image shape and classes
    check_data_size(config, len(data.train))
    init_model(config, dev)  # sizes or a seed that cannot be used fail here, before anything is written
    if not world.main:
        world.outcome(None)  # raises if rank 0 could not claim the run directory
        return _fit(config, out, data=data, device=dev, world=world, resume=False, progress=False, log=_quiet)
    with ExitStack() as claimed:
        try:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CheckpointError(f"{out}: cannot create the run directory ({e.strerror})") from None
            claimed.enter_context(run_lock(out))  # also the first write: an unwritable directory fails here
            check_new_run_dir(out, allowed=keep, locked=True)  # another process may have started a run here
            remove_stale_temp_files(out)
            save_config(out, config)
        except BaseException as e:
            world.outcome(e)
            raise
        world.outcome(None)
        return _fit(config, out, data=data, device=dev, world=world, resume=False, progress=progress, log=log)


def resume(run_dir: str | Path, *, epochs: int | None = None, data: PixelData | None = None,
           data_dir: str | Path | None = None, device: str = "auto", progress: bool | None = None,
           log: Callable[[str], None] = _log) -> TrainResult:
    """Continue the run in `run_dir` up to `epochs` total (default: its configured total), exactly as
    if it had never stopped (same numbers bit for bit). Options as for `train`.

    The recorded total never moves below what the run has done: `epochs` fewer than its finished
    epochs (or than a partly done one) is a no-op that logs where the run stands and returns its
    result, as does resuming a finished run.
    """
    run_dir = Path(run_dir)
    world, dev = join(resolve_device(device))
    config = load_config(run_dir)  # a clear error for a missing or foreign directory before locking it
    if epochs is not None:
        check_options_apply(config.model, ["epochs"])
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a whole number >= 0, got {epochs}")
    done, partly = run_progress(run_dir)
    if epochs is not None and (epochs < done or (epochs == done and partly)):
        check_not_in_use(run_dir)  # a run training right now is reported as such, even for a no-op
        where = f"{done} of {config.epochs} epoch{'s' if config.epochs != 1 else ''} done"
        if world.main:
            log(f"{run_dir}: {where}{' and the next one begun' if partly else ''}; --epochs {epochs} would go "
                f"back, so nothing changed" + ("" if done >= config.epochs and not partly else
                                               f" (continue with: vaelab train --resume {run_dir})"))
        return _result_so_far(run_dir, config, done)
    if epochs is not None and epochs != config.epochs:  # saved by _fit once the checkpoint has loaded
        config = RunConfig.from_dict({**config.to_dict(), "epochs": epochs})
    world.agree("configuration", config.to_dict())
    _check_world(config, world)
    check_precision(config.precision, dev)
    data = data if data is not None else load_data(config, data_dir)
    data.check()
    check_data_size(config, len(data.train))
    if not world.main:
        world.outcome(None)
        return _fit(config, run_dir, data=data, device=dev, world=world, resume=True, progress=False, log=_quiet)
    with ExitStack() as claimed:
        try:
            claimed.enter_context(run_lock(run_dir))
            remove_stale_temp_files(run_dir)
        except BaseException as e:
            world.outcome(e)
            raise
        world.outcome(None)
        return _fit(config, run_dir, data=data, device=dev, world=world, resume=True, progress=progress, log=log)


def _result_so_far(run_dir: Path, config: RunConfig, done: int) -> TrainResult:
    """The TrainResult of a run's first `done` epochs, from its metrics.jsonl (nothing is trained)."""
    history = [r for r in read_metrics(run_dir) if r["epoch"] <= done]
    best = min(history, key=lambda r: r["valid_loss"], default=None)  # the first of equals, as training picks
    return TrainResult(run_dir, done, best["epoch"] if best else None, best["valid_loss"] if best else math.inf,
                       history, config.epochs)


KERNEL_CACHE = "linear-kernel.json"  # in the cache directory: this machine's probed kernel per CPU and torch


def machine_kernel() -> str:
    """The linear kernel a new run starts with: $VAELAB_LINEAR if set, else the probe's choice, kept in
    the cache directory per CPU model and torch version, so that every later process on this machine
    (idle or loaded) starts its runs on the same kernel and the same command gives the same numbers."""
    if os.environ.get(KERNEL_ENV, "").strip():
        return preferred_kernel()
    path = cache_dir() / KERNEL_CACHE
    key = f"{cpu_model()} | torch {torch.__version__}"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved, dict) and saved.get(key) in KERNELS:
        return saved[key]
    kernel = preferred_kernel()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**(saved if isinstance(saved, dict) else {}), key: kernel})
    except OSError:  # an unwritable cache only costs the next process a probe
        pass
    return kernel


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError unless `precision` is float32, or bfloat16 on a device that computes it natively."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bfloat16" and not native_bfloat16(device):
        raise ConfigError(f"--precision bfloat16 needs native bfloat16 (a CPU with AVX-512 BF16 or AMX, or a GPU); "
                          f"this {device.type} would emulate it, slower than float32: use --precision float32")


def _check_world(config: RunConfig, world: World) -> None:
    """The global batch is split evenly over the ranks: --batch-size must be a multiple of their number."""
    if world.distributed and config.batch_size % world.size:
        raise ConfigError(f"--batch-size {config.batch_size} does not split over {world.size} processes: use a "
                          f"multiple of {world.size} (the global batch stays --batch-size; each rank takes its part)")


def _quiet(message: str) -> None:
    """Ranks other than 0 say nothing: rank 0 speaks for the run."""


class ObjectiveStep(nn.Module):
    """The objective's per-example terms as a module, so that DistributedDataParallel sees a forward()."""

    def __init__(self, model: nn.Module, objective: Callable):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None, beta: float) -> dict[str, torch.Tensor]:
        return self.objective(self.model, x, beta=beta, noise=noise)


def take_step(config: RunConfig, step: nn.Module, optimizer: torch.optim.Optimizer, data: PixelData,
              idx: torch.Tensor, generator: torch.Generator, *, global_step: int, steps_per_epoch: int,
              world: World, sums: torch.Tensor) -> None:
    """One optimizer step on the training images `idx` (an `ObjectiveStep`, possibly in DDP), at the
    learning rate and KL weight of `global_step`; adds the batch's per-example term sums (`TERMS`) to
    `sums`. A non-finite loss raises NonFiniteLossError before it reaches the weights."""
    device = data.train.device
    # Every rank draws the whole global batch's binarization and noise (the generator stays in
    # step with one process's), then takes its own part of the batch.
    x = data.train_batch(idx, generator)  # (B, P)
    shape = noise_shape(config.objective, len(idx), config.latent_dim, k=config.k)  # the objective's
    noise = None if shape is None else torch.randn(shape, generator=generator, device=device)  # (B, [K,] D)
    if config.lr_schedule != "constant":
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, global_step, steps_per_epoch)
    beta = kl_weight(config, global_step, steps_per_epoch)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"):
        terms = step(world.shard(x), None if noise is None else world.shard(noise), beta)
    # sum / (B / N): the ranks' gradients, averaged by DDP, are the gradient of the global mean
    loss = terms["loss"].sum() / (len(idx) / world.size)
    if not world.all_true(bool(torch.isfinite(loss)), device):
        raise NonFiniteLossError(f"non-finite loss ({loss.item()})")
    optimizer.zero_grad(set_to_none=True)
    with world.collective("averaging gradients"):
        loss.backward()
    optimizer.step()
    with torch.no_grad():
        sums += torch.stack([terms[k].detach().sum() for k in TERMS]).double()


def _fit(config: RunConfig, run_dir: Path, *, data: PixelData, device: torch.device, world: World, resume: bool,
         progress: bool | None, log: Callable[[str], None]) -> TrainResult:
    model = init_model(config, device)
    data = data.to(device)
    if device.type == "cpu":
        keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
    if isinstance(model, PCA):
        if world.distributed:
            raise ConfigError("PCA is fit in closed form in one process; run it without torchrun")
        return _fit_pca(config, run_dir, model, data, log)
    optimizer = make_optimizer(model, config.lr)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    state = {"epoch": 0, "step": 0, "history": [], "best_epoch": None, "best_valid_loss": math.inf,
             "linear_kernel": machine_kernel()}
    if resume:
        if _before_first_checkpoint(run_dir):  # starting over is exact: everything is seeded
            log(f"{run_dir}: stopped before its first checkpoint; starting from epoch 1")
        else:
            state = load_training_state(run_dir, model=model, optimizer=optimizer, generator=generator)
            state.setdefault("linear_kernel", "onednn")  # what runs before the probe used where it applied
        if world.main:
            if config != load_config(run_dir):  # a new --epochs total; a failed resume leaves the file as it was
                save_config(run_dir, config)
            write_metrics(run_dir, state["history"])  # drops lines a crash may have left past the checkpoint
    # The run keeps the kernel it started with: a resumed run sums in the same order, to the last bit.
    set_kernel(model, state["linear_kernel"])
    step = ObjectiveStep(model, objective_function(config.objective, k=config.k))
    if world.distributed:
        step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    n = len(data.train)
    n_batches = math.ceil(n / config.batch_size)
    # Ctrl-C under torchrun ends every rank at once; the epoch checkpoints are what resumes there.
    # Adam's moments of dead units decay into subnormals, 1.7x slower epochs on x86 (device.subnormals_flushed)
    with (_stop_on_sigint() if not world.distributed else nullcontext(_StopRequest())) as stop, \
            (subnormals_flushed() if device.type == "cpu" else nullcontext()):
        return _epochs(config, run_dir, model=model, step=step, optimizer=optimizer, generator=generator,
                       state=state, data=data, world=world, n_batches=n_batches, stop=stop, progress=progress,
                       log=log)


def _before_first_checkpoint(run_dir: Path) -> bool:
    """Whether a run stopped before its first training checkpoint: none on disk, no metrics, and at
    most epoch 1's best weights (written just before that checkpoint). Anything else without a usable
    checkpoint is an error, never a silent fresh start."""
    if checkpoint_paths(run_dir) or read_metrics(run_dir):
        return False
    if not (run_dir / MODEL_FILE).exists():
        return True
    try:
        return load_tensors(run_dir / MODEL_FILE)[1].get("epoch") == 1
    except CheckpointError:
        return False


def _epochs(config: RunConfig, run_dir: Path, *, model: nn.Module, step: nn.Module,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, state: dict, data: PixelData,
            world: World, n_batches: int, stop: _StopRequest, progress: bool | None,
            log: Callable[[str], None]) -> TrainResult:
    """The epoch loop of `_fit`, from `state` (possibly a mid-epoch checkpoint) to `config.epochs`."""
    n, device = len(data.train), data.train.device
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        first = state.pop("batch", 0)  # batches of this epoch done before a Ctrl-C checkpoint
        partial = state.pop("epoch_tensors", None)
        if partial is not None:  # the sums are the whole batch's: rank 0 carries them, the others add to zero
            perm, sums = partial["perm"].to(device), partial["sums"].to(device) * world.main
        else:
            perm = torch.randperm(n, generator=generator, device=device)
            sums = torch.zeros(3, dtype=torch.float64, device=device)
        bar = tqdm(total=n_batches, initial=first, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   file=sys.stderr, disable=(None if progress is None else not progress) if world.main else True)
        for i in range(first, n_batches):
            idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
            try:
                take_step(config, step, optimizer, data, idx, generator, global_step=state["step"],
                          steps_per_epoch=n_batches, world=world, sums=sums)
            except NonFiniteLossError as error:
                bar.close()
                raise NonFiniteLossError(f"{error} at epoch {epoch}, step {i + 1} of {n_batches}; "
                                         f"{_what_is_left(run_dir, state)}") from None
            state["step"] += 1
            bar.update()
            if stop.requested and i + 1 < n_batches:  # (on the last step, finish the epoch instead)
                bar.close()
                with _saving(epoch, run_dir):
                    path = save_training_state(run_dir, model=model, optimizer=optimizer, generator=generator,
                                               state={**state, "batch": i + 1},
                                               epoch_tensors={"perm": perm, "sums": sums})
                raise TrainingInterrupted(f"interrupted at epoch {epoch}, step {i + 1} of {n_batches}; saved "
                                          f"{path}. Resume with: vaelab train --resume {run_dir}")
        bar.close()
        train_means = (world.sum(sums) / n).tolist()
        # validated at the full β whatever the warm-up, so that epochs compare on one objective; in the
        # run's precision (`vaelab evaluate` gives float32 numbers by default)
        valid = evaluate_objective(model, config.objective, data.valid, beta=config.beta, seed=config.eval_seed,
                                   k=config.k, precision=config.precision)
        if not math.isfinite(valid["loss"]):
            raise NonFiniteLossError(f"non-finite validation loss after epoch {epoch}; "
                                     f"{_what_is_left(run_dir, state)}")
        record = {"epoch": epoch, "step": state["step"],
                  "train_loss": train_means[0], "train_reconstruction": train_means[1],
                  "train_regularizer": train_means[2],
                  **{f"valid_{k}": v for k, v in valid.items()}}
        state["history"].append(record)
        state["epoch"] = epoch
        improved = valid["loss"] < state["best_valid_loss"]
        if improved:
            state["best_valid_loss"], state["best_epoch"] = valid["loss"], epoch
        if world.main:  # rank 0 alone writes; every rank keeps the same state
            with _saving(epoch, run_dir):
                if improved:
                    save_model(run_dir, model, {"kind": "model", "epoch": epoch, "valid_loss": valid["loss"],
                                                "linear_kernel": state["linear_kernel"]})
                save_training_state(run_dir, model=model, optimizer=optimizer, generator=generator, state=state)
                write_metrics(run_dir, state["history"])
                # Wall time is kept apart so that metrics.jsonl stays deterministic.
                append_timing(run_dir, {"epoch": epoch, "seconds": round(time.perf_counter() - started, 3)})
        seconds = time.perf_counter() - started
        log(f"epoch {epoch}/{config.epochs}  train loss {train_means[0]:.2f}  valid loss {valid['loss']:.2f} "
            f"nats/image{_per_dim(config, valid['loss'])}  ({seconds:.1f} s)")
        if stop.requested:
            raise TrainingInterrupted(f"interrupted after epoch {epoch}; saved its checkpoint. "
                                      f"Resume with: vaelab train --resume {run_dir}")
    return TrainResult(run_dir, state["epoch"], state["best_epoch"], state["best_valid_loss"], state["history"],
                       config.epochs)


def _what_is_left(run_dir: Path, state: dict) -> str:
    """The second half of a divergence message: what is on disk, and a next step that works (--resume
    would repeat the same steps bit for bit, and it cannot change --lr)."""
    if not checkpoint_paths(run_dir):
        return (f"nothing was saved (no epoch finished). Start again with a lower --lr; --out {run_dir} may "
                "be reused, as it holds no checkpoint")
    return (f"the last good checkpoint (epoch {state['epoch']}) is intact. --resume would repeat the same steps; "
            "for a lower --lr start a new run (another --out)")


def _per_dim(config: RunConfig, nats: float) -> str:
    """', 0.123 bits/dim (bernoulli)': the loss per dimension and the likelihood it is in; '' for PCA."""
    if config.model == "pca":
        return ""
    return f", {bits_per_dim(nats, config.n_pixels):.4f} bits/dim ({config.likelihood})"


@contextmanager
def _saving(epoch: int, run_dir: Path) -> Iterator[None]:
    """Around checkpoint writes: an OSError (disk full, ...) is re-raised saying what is intact."""
    try:
        yield
    except OSError as e:
        message = (f"{e.strerror}; training stopped in epoch {epoch}. Files already written are intact: "
                   f"free space, then resume with: vaelab train --resume {run_dir}")
        raise OSError(e.errno, message, e.filename) from None


def _fit_pca(config: RunConfig, run_dir: Path, model: PCA, data: PixelData,
             log: Callable[[str], None]) -> TrainResult:
    """PCA is fit in closed form to one binarized draw of the training set (seeded), or to grayscale."""
    generator = torch.Generator(device=data.train.device).manual_seed(config.seed)
    x = data.train_batch(torch.arange(len(data.train), device=data.train.device), generator)
    model.fit(x)
    valid = evaluate_objective(model, config.objective, data.valid, beta=config.beta, seed=config.eval_seed)
    if not all(math.isfinite(v) for v in valid.values()) or not all(
            torch.isfinite(t).all() for t in model.state_dict().values()):
        raise NonFiniteLossError(f"the pca fit gave a non-finite result (validation squared error "
                                 f"{valid['squared_error']}); nothing was saved")
    record = {"epoch": 0, "step": 0, **{f"valid_{k}": v for k, v in valid.items()}}
    save_model(run_dir, model, {"kind": "model", "epoch": 0, "valid_loss": valid["loss"]})
    write_metrics(run_dir, [record])
    log(f"PCA fit: valid squared error {valid['squared_error']:.2f} per image")
    return TrainResult(run_dir, 0, 0, valid["loss"], [record])
