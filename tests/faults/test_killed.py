"""SIGKILL at random moments, inside file writes included: `vaelab train --resume` then finishes
bit-identical to an uninterrupted run, and every file under a real name loads at every moment.
And the run-directory lock: a second training in a running directory is refused, and a killed run
leaves no lock behind that blocks the next one."""

import os
import random
import time

from vaelab.checkpoint import checkpoint_paths
from vaelab.runfiles import LOCK_FILE, SLOW_WRITE_ENV, run_lock

from .faultkit import (
    RUN_ARGS,
    assert_one_clear_line,
    assert_same_run,
    epoch_checkpoint,
    finish,
    kill,
    load_every_file,
    run_cli,
    start,
    temp_files,
    wait_until,
)

# The moments are random; a failure prints the seed, and VAELAB_FAULT_SEED=<seed> replays it.
SEED = int(os.environ.get("VAELAB_FAULT_SEED", time.time_ns() % 2**32))
SLOW = {SLOW_WRITE_ENV: "0.5"}  # every atomic write pauses halfway for 0.5 s: a wide window to kill in


class Watcher:
    """Each call (at most every 20 ms) loads every real-named file of the run directory; a half-written
    file raises there and then."""

    def __init__(self, run_dir):
        self.run_dir, self.loads, self.last = run_dir, 0, 0.0

    def __call__(self, force: bool = False) -> None:
        if (force or time.monotonic() - self.last > 0.02) and self.run_dir.exists():
            self.loads += load_every_file(self.run_dir)
            self.last = time.monotonic()


def test_killed_at_random_moments_and_inside_writes_then_resumed_equals_an_uninterrupted_run(
        cli_mnist, reference_run, tmp_path):
    print(f"VAELAB_FAULT_SEED={SEED}")
    root, sums = cli_mnist
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    watch = Watcher(run_dir)
    resume = ["train", "--resume", run_dir, "--data-dir", root]

    # 1. Inside the first checkpoint write (held open by the hook): the best weights of epoch 1 exist,
    # no checkpoint does yet.
    proc = start(sums, ["train", *RUN_ARGS, "--data-dir", root, "--out", run_dir], tmp=tmp_path, env=SLOW)
    first = run_dir / "checkpoints" / f".{epoch_checkpoint(run_dir, 1).name}.*.tmp"
    wait_until(lambda: any(first.parent.glob(first.name)), proc, while_waiting=watch)
    kill(proc)
    assert list(first.parent.glob(first.name)) and checkpoint_paths(run_dir) == []
    assert (run_dir / "model.safetensors").exists()
    watch(force=True)

    # 2. A random moment in epoch 2 to 4 (or its checkpoint).
    proc = start(sums, resume, tmp=tmp_path)
    wait_until(epoch_checkpoint(run_dir, rng.randint(1, 3)).exists, proc, while_waiting=watch)
    time.sleep(rng.uniform(0, 0.08))
    kill(proc)
    watch(force=True)

    # 3-4. Inside a checkpoint write, then inside a write of the best weights.
    for folder, pattern in [(run_dir / "checkpoints", ".step-*.tmp"), (run_dir, ".model.safetensors.*.tmp")]:
        proc = start(sums, resume, tmp=tmp_path, env=SLOW)
        wait_until(lambda: any(folder.glob(pattern)), proc, while_waiting=watch)  # noqa: B023
        kill(proc)
        assert list(folder.glob(pattern)), f"the kill missed the write of {pattern}"
        watch(force=True)

    # 5. A random moment just after a checkpoint was renamed into place (old one not yet pruned, metrics
    # not yet rewritten).
    before = set(checkpoint_paths(run_dir))
    proc = start(sums, resume, tmp=tmp_path)
    wait_until(lambda: set(checkpoint_paths(run_dir)) - before, proc, while_waiting=watch)
    time.sleep(rng.uniform(0, 0.02))
    kill(proc)
    watch(force=True)

    # 6. Resume to the end: the same bytes as the uninterrupted run, and no temporary file left over.
    code, _, err = finish(start(sums, resume, tmp=tmp_path))
    assert code == 0, err
    assert_same_run(run_dir, reference_run)
    assert temp_files(run_dir) == []
    assert watch.loads > 0


def test_second_training_in_a_running_directory_is_refused_and_a_killed_run_leaves_no_stuck_lock(
        cli_mnist, tmp_path):
    root, sums = cli_mnist
    run_dir = tmp_path / "run"
    proc = start(sums, ["train", *RUN_ARGS, "--data-dir", root, "--out", run_dir], tmp=tmp_path, env=SLOW)
    lock = run_dir / LOCK_FILE
    wait_until(lambda: (run_dir / "config.json").exists() and lock.read_text() == f"vaelab process {proc.pid}\n",
               proc)
    # This test process is the second one; flock() is per open file, so this is a real contention.
    for argv in (["train", "--resume", run_dir], ["train", *RUN_ARGS, "--out", run_dir]):
        code, _, err = run_cli(argv)
        assert code == 2
        assert_one_clear_line(err, f"{run_dir} is in use: vaelab process {proc.pid} is training in it")
    assert proc.poll() is None
    kill(proc)
    assert lock.exists()  # the file stays; the lock died with its process
    with run_lock(run_dir):
        pass
