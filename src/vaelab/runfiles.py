"""Run-directory files: the layout, atomic writes, JSON, the config file, metrics and the lock.

A run directory holds `config.json` (what to build), `model.safetensors` (best-validation weights),
`checkpoints/step-*.safetensors` (full training state, see checkpoint.py), `metrics.jsonl`,
`timing.jsonl` and, for evaluated runs, `evaluation.json`. Every file is written to a temporary name
(`.NAME.*.tmp`), fsynced and renamed, so a crash never leaves a half-written file under a real name.
A training process holds an exclusive lock on `.lock` in its run directory (see `run_lock`).

Test hook: the environment variable VAELAB_TEST_SLOW_WRITE=SECONDS makes `atomic_write` pause for
that long halfway through writing each temporary file, so that tests can kill a process inside a
checkpoint write (tests/faults/). Unset, it costs one dictionary look-up per file written.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked there
    fcntl = None

from .config import ConfigError, RunConfig
from .version import __version__

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
EVALUATION_FILE = "evaluation.json"



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


def save_config(run_dir: Path, config: RunConfig) -> None:
    write_json(Path(run_dir) / CONFIG_FILE,
               {"format_version": FORMAT_VERSION, "vaelab_version": __version__, "config": config.to_dict()})


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
    before any training. The file's text (who holds it, for other processes' messages) is written
    only once the lock is ours; a process refused the lock reads it and changes nothing. Where fcntl
    does not exist (Windows) no lock is taken.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        f = open(path, "a+")  # appending mode: opening never truncates a holder's text
    except OSError as e:
        raise CheckpointError(f"{run_dir}: cannot write to the run directory ({e.strerror})") from None
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise _in_use(run_dir, f.read()) from None
            f.truncate(0)  # ours now: replace a previous holder's text
            f.write(f"vaelab process {os.getpid()}\n")  # only for the message of `_in_use`
            f.flush()
        yield


def _in_use(run_dir: Path, holder_text: str) -> RunInUseError:
    holder = holder_text.strip() or "another process"
    return RunInUseError(f"{run_dir} is in use: {holder} is training in it; wait for it to finish "
                         "or use another directory")


def holder(run_dir: Path) -> str | None:
    """Who is training in `run_dir` ("vaelab process N"), or None if nobody holds its lock. Reads
    only: creates and writes nothing (a shared flock is taken and dropped at once, so a trainer
    starting in that instant may be told the directory is in use)."""
    if fcntl is None:
        return None
    try:
        f = open(Path(run_dir) / LOCK_FILE)
    except OSError:  # no lock file (or none we may read): nobody trains there
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def check_not_in_use(run_dir: Path) -> None:
    """RunInUseError if a process is training in `run_dir`; touches nothing (see `holder`)."""
    who = holder(run_dir)
    if who is not None:
        raise _in_use(run_dir, who)


def check_new_run_dir(out: Path, *, allowed: Iterable[str] = (), locked: bool = False) -> None:
    """CheckpointError unless `out` can take a new run: a path that does not exist yet, an empty
    directory, or a directory holding only a vaelab run that saved nothing (its config.json, lock and
    an empty metrics.jsonl: it stopped or diverged before its first checkpoint), which the new run
    replaces. `allowed`: names of other files that may be there (reproduce's note). `locked`: the
    caller holds the directory's lock (else a run training there is reported as in use)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file, not a directory; choose another --out")
    if not out.exists():
        return
    if not locked:
        check_not_in_use(out)
    skip = {LOCK_FILE, *allowed}
    names = sorted(p.name for p in out.iterdir() if p.name not in skip and not _is_temp(p))
    if CONFIG_FILE in names:
        saved = [name for name in names if name != CONFIG_FILE and not _holds_nothing(out / name)]
        if saved:
            raise CheckpointError(f"{out} already holds a run; continue it with --resume {out}, or choose "
                                  "another --out")
        return  # a run that saved nothing: the new one takes its place
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CheckpointError(f"{out} is not empty (it holds {shown}); a new run goes into a new or empty "
                              "directory: choose another --out")


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _holds_nothing(path: Path) -> bool:
    """An empty metrics file, or a checkpoints folder with no checkpoint in it (temporary files only)."""
    if path.name == METRICS_FILE and path.is_file():
        return path.stat().st_size == 0
    if path.name == CHECKPOINT_DIR and path.is_dir():
        return all(_is_temp(p) for p in path.iterdir())
    return False


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
