"""Run directories and checkpoints: safetensors + JSON, written atomically, never pickle.

A run directory holds `config.json` (what to build), `model.safetensors` (best-validation weights),
`checkpoints/step-*.safetensors` (full training state: weights, Adam state, RNG state, history; the
newest two are kept), `metrics.jsonl` and `timing.jsonl`. Every file is written to a temporary name
(`.NAME.*.tmp`), fsynced and renamed, so a crash never leaves a half-written file under a real name.
A training process holds an exclusive lock on `.lock` in its run directory (see `run_lock`).

Test hook: the environment variable VAELAB_TEST_SLOW_WRITE=SECONDS makes `atomic_write` pause for
that long halfway through writing each temporary file, so that tests can kill a process inside a
checkpoint write (tests/faults/). Unset, it costs one dictionary look-up per file written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked there
    fcntl = None

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import ConfigError, RunConfig

FORMAT_VERSION = 2  # bump when the run-directory layout, or what a run's numbers mean, changes incompatibly
# Format 1 (vaelab 0.1.0) binarized images with torch.bernoulli; format 2 draws U < p (data.bernoulli_draw),
# so its validation and test images differ: a format-1 run's logged losses do not compare with today's.
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.jsonl"
LOCK_FILE = ".lock"  # flock()ed by the process training in the run directory
SLOW_WRITE_ENV = "VAELAB_TEST_SLOW_WRITE"  # tests only: pause (seconds) halfway through each atomic write
KEEP_CHECKPOINTS = 2  # the newest and one fallback


class CheckpointError(RuntimeError):
    """A run directory or checkpoint that cannot be used; the message names the file."""


class RunInUseError(CheckpointError):
    """Another process is training in this run directory."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    An OSError (e.g. ENOSPC, disk full) leaves the old file untouched, removes the temporary file
    and is re-raised with `path` as its filename.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are ordinary readable files
        with os.fdopen(fd, "wb") as f:
            pause = float(os.environ.get(SLOW_WRITE_ENV) or 0)
            if pause > 0:  # test hook (module docstring): a wide window to kill the process in
                f.write(data[:len(data) // 2])
                f.flush()
                time.sleep(pause)
                data = data[len(data) // 2:]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        _unlink_quietly(tmp)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # already renamed into place
        pass


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


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
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({type(e).__name__})") from None
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


# --- run directory -------------------------------------------------------------------------------

def save_config(run_dir: Path, config: RunConfig, *, version: str) -> None:
    write_json(Path(run_dir) / CONFIG_FILE,
               {"format_version": FORMAT_VERSION, "vaelab_version": version, "config": config.to_dict()})


def load_config(run_dir: Path) -> RunConfig:
    """The RunConfig stored in `run_dir`, with a clear error for anything that is not a vaelab run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir}: not a vaelab run directory (no {CONFIG_FILE})")
    raw = read_json(run_dir / CONFIG_FILE)
    version = raw.get("format_version")
    if not isinstance(version, int) or "config" not in raw:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: not a vaelab run config")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{run_dir}: made by a newer vaelab (format {version}, this one reads up to "
                              f"{FORMAT_VERSION}); upgrade vaelab")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"{run_dir}: made by an older vaelab (format {version}, {raw.get('vaelab_version')}) "
                              f"whose binarized validation and test images differ from this version's; its logged "
                              f"losses would not compare, so train it again (a new --out, or reproduce --force)")
    try:
        return RunConfig.from_dict(raw["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: {e}") from None


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


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (so resume never duplicates lines)."""
    atomic_write(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())


def append_timing(run_dir: Path, record: dict) -> None:
    """Add one line to timing.jsonl, atomically like every other file (a rewrite: the file is tiny)."""
    path = Path(run_dir) / TIMING_FILE
    old = path.read_bytes() if path.exists() else b""
    atomic_write(path, old + (json.dumps(record) + "\n").encode())


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock() on RUN_DIR/.lock; RunInUseError if another process holds it.

    The operating system drops the lock when its process ends, however it ends, so a crashed or
    killed run never leaves the directory locked; the file itself stays behind, harmlessly. Opening
    the lock file is also the first write into the directory, so an unwritable directory fails here,
    before any training. Where fcntl does not exist (Windows) no lock is taken.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        f = open(path, "a+")
    except OSError as e:
        raise OSError(e.errno, f"cannot write to the run directory ({e.strerror})", str(run_dir)) from None
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise RunInUseError(f"{run_dir} is in use: {holder} is training in it; wait for it to finish "
                                    "or use another directory") from None
            f.seek(0)
            f.truncate()
            f.write(f"vaelab process {os.getpid()}\n")  # only for the message above
            f.flush()
        yield


def remove_stale_temp_files(run_dir: Path) -> None:
    """Delete the trainer's `.NAME.*.tmp` files that a killed process left; call holding `run_lock`."""
    run_dir = Path(run_dir)
    stale = [run_dir.glob(f".{name}.*.tmp") for name in (CONFIG_FILE, MODEL_FILE, METRICS_FILE, TIMING_FILE)]
    stale.append((run_dir / CHECKPOINT_DIR).glob(".step-*.tmp"))
    for tmp in (path for paths in stale for path in paths):
        tmp.unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
