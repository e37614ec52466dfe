"""Helpers for the fault suite: fake MNIST that child processes accept, child `vaelab` processes, and a
check that every file of a run directory loads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from conftest import fake_digits, idx_bytes
from vaelab import data as vdata
from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.linear import KERNEL_ENV
from vaelab.runfiles import read_json

HERE = Path(__file__).resolve().parent
FAKECLI = HERE / "fakecli.py"
VALID = 10_000  # the CLI's default validation size (the last images of the official training set)
BIG_TRAIN = 1_000  # training images of the CLI-sized fake set
BIG_TEST = 100
# The training run that the child-process tests interrupt in every way and compare with an
# uninterrupted one: tiny, but with enough steps (20 per epoch) and epochs for a random moment to land
# anywhere in it.
RUN_ARGS = ["--model", "vae", "--objective", "paper", "--latent-dim", "2", "--hidden", "32", "--batch-size", "50",
            "--epochs", "10", "--seed", "3", "--device", "cpu"]
STEPS_PER_EPOCH = BIG_TRAIN // 50
# A smaller run for tests that train in this process (20 steps per epoch, 2 epochs).
SMALL_ARGS = ["--model", "vae", "--objective", "paper", "--latent-dim", "2", "--hidden", "16", "--batch-size", "50",
              "--epochs", "2", "--seed", "2", "--device", "cpu"]


def write_cli_sized_mnist(root: Path) -> dict[str, Path]:
    """Fake MNIST big enough for the CLI's default split (10,000 validation + BIG_TRAIN training
    images, BIG_TEST test images), written with the shared fixture's IDX writer; role -> path."""
    raw = root / vdata.SPECS["mnist"].folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = fake_digits(VALID + BIG_TRAIN, seed=0)
    test_x, test_y = fake_digits(BIG_TEST, seed=1)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    paths = {}
    for role, f in vdata.SPECS["mnist"].files.items():
        paths[role] = raw / f.name
        paths[role].write_bytes(idx_bytes(arrays[role]))
    return paths


def sums_of(paths: dict[str, Path]) -> dict:
    """{"mnist": role -> checksums} that make vaelab accept these (uncompressed) files."""
    return {"mnist": {role: {"md5": hashlib.md5(p.read_bytes()).hexdigest(),
                             "gz_md5": hashlib.md5(p.read_bytes()).hexdigest()} for role, p in paths.items()}}


def current_sums(name: str = "mnist") -> dict:
    """The checksums vaelab trusts right now in this process (e.g. after the `fake_mnist` fixture)."""
    return {name: {role: {"md5": f.md5, "gz_md5": f.gz_md5} for role, f in vdata.SPECS[name].files.items()}}


# The linear kernel every fault-suite run uses. Left to the probe, each process (each with its own cache)
# times torch against oneDNN anew, and where the two are close a faulted run and its reference picked
# different kernels: same weights, different metadata, byte comparisons failed (seen on an AMD Zen 3).
FAULT_KERNEL = {KERNEL_ENV: "torch"}


def child_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child `vaelab`: no real data, a private cache, no network (a proxy on a
    closed port makes any download attempt fail at once instead of hanging), one torch thread (on a
    busy two-core machine, OpenMP threads spin-waiting for each other made epochs 50x slower), and
    FAULT_KERNEL."""
    env = {k: v for k, v in os.environ.items() if k not in (vdata.ENV_DATA, "no_proxy", "NO_PROXY")}
    closed = "http://127.0.0.1:9"
    env.update({vdata.ENV_CACHE: str(tmp / "cache"), "OMP_NUM_THREADS": "1", "http_proxy": closed,
                "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, **FAULT_KERNEL})
    env.update(extra or {})
    return env


def start(sums: Path, args: list, *, tmp: Path, env: dict[str, str] | None = None,
          optimize: bool = False) -> subprocess.Popen:
    """Start `vaelab ARGS` (through fakecli.py) in a child process with piped, text stdout/stderr."""
    command = [sys.executable, *(["-O"] if optimize else []), str(FAKECLI), str(sums), *map(str, args)]
    return subprocess.Popen(command, env=child_env(tmp, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a child, killing it if it outlives `timeout` seconds."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child did not finish in {timeout} s; stderr:\n{err}") from None
    return proc.returncode, out, err


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child (no handler runs, nothing is flushed) and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def run_cli(argv: list) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `vaelab ARGV` run in this process through `vaelab.cli.main`."""
    from vaelab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def assert_one_clear_line(err: str, *needles: str) -> None:
    """stderr holds no traceback and one error line ("vaelab: ...") containing every needle; any other
    line is training progress ("epoch 1/3 ..."), a warning, or an indented continuation of the error
    (the data not-found message has a few short lines); no Python exception name appears."""
    assert "Traceback" not in err, err
    assert not re.search(r"\b\w+(Error|Exception)\b|got (True|False|None)\b", err), err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("vaelab: ")]
    assert len(errors) == 1, err
    assert all(re.match(r"epoch \d+/\d+ |warning: |  \S", line) for line in lines if line not in errors), err
    for needle in needles:
        assert needle in errors[0], (needle, err)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, *, timeout: float = 120,
               while_waiting: Callable[[], object] | None = None) -> None:
    """Poll `condition` (and run `while_waiting`) until it holds; AssertionError if the child exits
    first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if while_waiting is not None:
            while_waiting()
        if proc.poll() is not None:
            if condition():
                return
            raise AssertionError(f"child exited ({proc.returncode}) before the awaited moment; "
                                 f"stderr:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            kill(proc)
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.003)


def load_every_file(run_dir: Path) -> int:
    """Load every file of a run directory that has a real name (temporary and lock files are
    dot-prefixed); return how many loaded. A file that disappears while being read (an old checkpoint
    pruned) is skipped; a damaged file raises."""
    loaded = 0
    for path in sorted(Path(run_dir).rglob("*")):
        if path.name.startswith(".") or path.is_dir():
            continue
        try:
            if path.suffix == ".safetensors":
                load_tensors(path)
            elif path.suffix == ".json":
                read_json(path)
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    json.loads(line)
            else:
                raise AssertionError(f"unexpected file in a run directory: {path}")
        except Exception:
            if not path.exists():
                continue
            raise
        loaded += 1
    return loaded


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    """The checkpoint RUN_ARGS writes at the end of `epoch` (its file name counts steps)."""
    return run_dir / "checkpoints" / f"step-{epoch * STEPS_PER_EPOCH:09d}.safetensors"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The files that define a run's result are byte-identical: config, metrics, best weights and the
    newest full training state (weights, Adam, RNG, history)."""
    newest = checkpoint_paths(reference)[0]
    assert checkpoint_paths(run_dir)[0].name == newest.name
    for name in ("config.json", "metrics.jsonl", "model.safetensors", f"checkpoints/{newest.name}"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


def temp_files(run_dir: Path) -> list[Path]:
    """The temporary files (`.NAME.*.tmp`) in a run directory and its checkpoints folder."""
    return sorted(Path(run_dir).rglob(".*.tmp"))
