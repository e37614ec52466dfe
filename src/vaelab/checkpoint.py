"""Checkpoints: tensors and training state as safetensors + JSON metadata with a checksum, never pickle.

`model.safetensors` holds a run's best-validation weights; `checkpoints/step-*.safetensors` the full
training state (weights, Adam state, RNG state, history; the newest two are kept), so a killed run
resumes exactly. Files go through `runfiles.atomic_write`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import RunConfig
from .device import resolve_device
from .linear import KERNELS, set_kernel
from .models import init_model
from .runfiles import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    MODEL_FILE,
    CheckpointError,
    RunInUseError,
    atomic_write,
    holder,
    load_config,
)

KEEP_CHECKPOINTS = 2  # the newest and one fallback


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """SHA-256 over metadata and tensor bytes: safetensors itself has no checksum, so a flipped
    bit in a weight would otherwise load silently."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors + JSON-able `meta` as one safetensors file with a checksum."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta_json = json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True)
    # One metadata entry holding the JSON and its checksum: safetensors keeps metadata in a hash map
    # whose order varies from run to run, so two entries gave identical saves different bytes.
    record = json.dumps({"meta": meta_json, "sha256": _digest(tensors, meta_json)})
    atomic_write(Path(path), st_save(tensors, metadata={"vaelab": record}))


def _signed_meta(extra) -> tuple[str, str] | None:
    """(metadata JSON, its SHA-256) from a safetensors header's metadata; None if not vaelab's."""
    if not isinstance(extra, dict) or not isinstance(extra.get("vaelab"), str):
        return None
    if "sha256" in extra:  # the first layout, two entries
        return extra["vaelab"], extra["sha256"]
    try:
        record = json.loads(extra["vaelab"])
        return record["meta"], record["sha256"]
    except (ValueError, KeyError, TypeError):
        return None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by save_tensors; CheckpointError if missing, damaged or foreign."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        tensors = st_load(blob)
    except Exception:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path}: damaged or not a safetensors file") from None
    signed = _signed_meta(header.get("__metadata__") if isinstance(header, dict) else None)
    if signed is None:
        raise CheckpointError(f"{path}: not written by vaelab (no vaelab metadata)")
    if _digest(tensors, signed[0]) != signed[1]:
        raise CheckpointError(f"{path}: checksum mismatch (the file is damaged)")
    meta = json.loads(signed[0])
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not written by vaelab (metadata is not a JSON object)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer vaelab (format {meta['format_version']}, "
                              f"this one reads up to {FORMAT_VERSION}); upgrade vaelab")
    return tensors, meta



def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path, prefix: str = "") -> None:
    """Copy `tensors` into `model`, listing every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k}: file has {tuple(found[k].shape)}, config needs {tuple(v.shape)}"
                 for k, v in expected.items() if k in found and found[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"{source}: weights do not match config.json: " + "; ".join(problems))
    model.load_state_dict(found)


def save_model(run_dir: Path, model: nn.Module, meta: dict) -> None:
    save_tensors(Path(run_dir) / MODEL_FILE, model.state_dict(), meta)


def load_model(run_dir: Path, model: nn.Module) -> dict:
    """Load the best-validation weights of `run_dir` into `model`; returns their metadata."""
    path = Path(run_dir) / MODEL_FILE
    tensors, meta = load_tensors(path)
    load_weights(model, tensors, path)
    return meta


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Complete training checkpoints, newest first."""
    return sorted((Path(run_dir) / CHECKPOINT_DIR).glob("step-*.safetensors"), reverse=True)


def save_training_state(run_dir: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator, state: dict,
                        epoch_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write everything needed to resume exactly: weights, Adam state, RNG state, `state` (JSON).

    A mid-epoch checkpoint has `state["batch"]` > 0 (batches of the unfinished epoch done) and
    passes that epoch's `epoch_tensors` (its permutation and partial loss sums); `load_training_state`
    hands them back under the key "epoch_tensors".
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"epoch.{k}": v for k, v in (epoch_tensors or {}).items()})
    opt = optimizer.state_dict()
    for index, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"optimizer.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng"] = generator.get_state()
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"step-{state['step']:09d}.safetensors"
    save_tensors(path, tensors, {"kind": "training_state", "state": state,
                                 "param_groups": opt["param_groups"]})
    for old in checkpoint_paths(run_dir)[KEEP_CHECKPOINTS:]:
        old.unlink(missing_ok=True)
    return path


def load_training_state(run_dir: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator) -> dict:
    """Restore the newest complete checkpoint; fall back to an older one (with a warning) if damaged."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise CheckpointError(f"{run_dir}: no training checkpoint to resume from")
    problems = []
    for path in paths:
        try:
            state = _restore(path, model=model, optimizer=optimizer, generator=generator)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        for p in problems:
            print(f"warning: skipped a damaged checkpoint: {p}; resuming from {path.name}", file=sys.stderr)
        return state
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems))


def _restore(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> dict:
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "training_state" or "state" not in meta:
        raise CheckpointError(f"{path}: not a training checkpoint")
    if "rng" not in tensors:
        raise CheckpointError(f"{path}: RNG state missing; cannot resume exactly")
    state = meta["state"]
    if state.get("batch", 0) > 0:
        epoch_tensors = {k[len("epoch."):]: v for k, v in tensors.items() if k.startswith("epoch.")}
        if set(epoch_tensors) != {"perm", "sums"}:
            raise CheckpointError(f"{path}: mid-epoch checkpoint without the epoch's permutation and sums; "
                                  "cannot resume exactly")
        state["epoch_tensors"] = epoch_tensors
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    n_params = len(list(model.parameters()))
    if sorted(per_param) != list(range(n_params)) or "param_groups" not in meta:
        raise CheckpointError(f"{path}: optimizer state missing or incomplete; cannot resume exactly")
    load_weights(model, tensors, path, prefix="model.")
    try:
        # load_state_dict moves each tensor to its parameter's device and dtype itself.
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        generator.set_state(tensors["rng"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer or RNG state does not fit this run ({e})") from None
    return state



def load_trained(run_dir: str | Path, device: str | torch.device = "auto") -> tuple[nn.Module, RunConfig, dict]:
    """(model in eval mode with its best-validation weights, config, weight metadata) from a run directory.

    CheckpointError for a run with no finished epoch yet (saying whether it is training right now)
    and for weights holding NaN or infinity (a non-finite result is never evaluated or sampled)."""
    config = load_config(run_dir)
    path = Path(run_dir) / MODEL_FILE
    if not path.exists():
        who = holder(run_dir)
        if who is not None:
            raise RunInUseError(f"{run_dir} has no finished epoch yet: it is in use ({who} is training in it); "
                                "try again after its first epoch")
        raise CheckpointError(f"{run_dir} has no finished epoch yet (it stopped before the end of its first); "
                              f"continue it with: vaelab train --resume {run_dir} (or, if it diverged, train "
                              f"again with --out {run_dir} and a lower --lr)")
    model = init_model(config, resolve_device(device))
    meta = load_model(run_dir, model)
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: {bad[0]} holds NaN or infinity; this run has no usable result, train it "
                              "again")
    if meta.get("linear_kernel") in KERNELS:  # the kernel it was validated with: `evaluate` repeats its numbers
        set_kernel(model, meta["linear_kernel"])
    model.eval()
    return model, config, meta


def run_progress(run_dir: str | Path) -> tuple[int, bool]:
    """(epochs finished, whether a later epoch is partly done) from the newest readable training
    checkpoint; (0, False) for a run without one (a PCA run, or one stopped before its first)."""
    for path in checkpoint_paths(run_dir):
        try:
            state = load_tensors(path)[1]["state"]
            return int(state["epoch"]), int(state.get("batch", 0)) > 0
        except (CheckpointError, KeyError, TypeError, ValueError):
            continue  # damaged: resume falls back to the previous one, and so does this
    return 0, False
