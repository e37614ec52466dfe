"""Ctrl-C (SIGINT) during training saves a checkpoint, says how to resume, exits 130; the resumed run
equals an uninterrupted one bit for bit, also when the checkpoint was saved in the middle of an epoch."""

import os
import random
import signal
import time

import pytest

from conftest import FAKE_VALID
from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.config import RunConfig
from vaelab.objectives import OBJECTIVES
from vaelab.runfiles import SLOW_WRITE_ENV
from vaelab.training import TrainingInterrupted, resume, train

from .faultkit import (
    RUN_ARGS,
    assert_one_clear_line,
    assert_same_run,
    epoch_checkpoint,
    finish,
    start,
    temp_files,
    wait_until,
)

SEED = int(os.environ.get("VAELAB_FAULT_SEED", time.time_ns() % 2**32))  # replay a failure with it


def test_ctrl_c_in_a_child_saves_says_how_to_resume_and_exits_130(cli_mnist, reference_run, tmp_path):
    print(f"VAELAB_FAULT_SEED={SEED}")
    root, sums = cli_mnist
    run_dir = tmp_path / "run"
    rng = random.Random(SEED)
    proc = start(sums, ["train", *RUN_ARGS, "--data-dir", root, "--out", run_dir], tmp=tmp_path)
    # A random moment in epoch 2 to 6 (of 10): usually mid-epoch, at times during its checkpoint.
    wait_until(epoch_checkpoint(run_dir, rng.randint(1, 5)).exists, proc)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert f"Resume with: vaelab train --resume {run_dir}" in err
    assert "Traceback" not in err
    newest = checkpoint_paths(run_dir)[0]
    assert newest.name in err or "saved its checkpoint" in err  # the message names what it saved
    load_tensors(newest)
    code, _, err = finish(start(sums, ["train", "--resume", run_dir, "--data-dir", root], tmp=tmp_path))
    assert code == 0, err
    assert_same_run(run_dir, reference_run)


def test_ctrl_c_before_training_exits_130_and_leaves_no_half_written_file(cli_mnist, tmp_path):
    root, sums = cli_mnist
    run_dir = tmp_path / "run"
    proc = start(sums, ["train", *RUN_ARGS, "--data-dir", root, "--out", run_dir], tmp=tmp_path,
                 env={SLOW_WRITE_ENV: "0.5"})
    wait_until(lambda: any(run_dir.glob(".config.json.*.tmp")), proc)  # inside the first write
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130
    assert_one_clear_line(err, "vaelab: error: interrupted")
    assert not (run_dir / "config.json").exists() and temp_files(run_dir) == []


def tiny(**overrides) -> RunConfig:
    # 200 training images / 32 = 7 steps per epoch
    values = dict(model="vae", objective="paper", latent_dim=2, hidden=(16,), epochs=3, batch_size=32,
                  valid_size=FAKE_VALID, seed=5)
    return RunConfig(**{**values, **overrides})


def quiet(_message: str) -> None:
    pass


@pytest.fixture
def sigint_at_step(monkeypatch):
    """sigint_at_step(k, times=1): deliver a real SIGINT to this process during training step k (counted
    over the whole run), through the objective. A SIGINT that reaches the test's own handler means
    training did not handle it, and fails the test."""
    def not_handled(signum, frame):
        raise AssertionError("SIGINT reached the test: training did not handle it")

    previous = signal.signal(signal.SIGINT, not_handled)
    real = OBJECTIVES["paper"]

    def arm(k: int, times: int = 1) -> None:
        calls = {"n": 0}

        def objective(model, x, **kwargs):
            if model.training:
                calls["n"] += 1
                if calls["n"] == k:
                    for _ in range(times):
                        signal.raise_signal(signal.SIGINT)
            return real(model, x, **kwargs)

        monkeypatch.setitem(OBJECTIVES, "paper", objective)

    yield arm
    assert signal.getsignal(signal.SIGINT) is not_handled  # training put the handler back
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_mid_epoch_saves_the_epoch_and_resume_is_bit_exact(fake_mnist, tmp_path, sigint_at_step):
    config = tiny()
    train(config, tmp_path / "straight", data_dir=fake_mnist, progress=False, log=quiet)
    sigint_at_step(7 + 3)  # the 3rd step of epoch 2
    run_dir = tmp_path / "split"
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2, step 3 of 7; saved .*step-000000010"):
        train(config, run_dir, data_dir=fake_mnist, progress=False, log=quiet)
    tensors, meta = load_tensors(checkpoint_paths(run_dir)[0])
    assert meta["state"]["epoch"] == 1 and meta["state"]["batch"] == 3 and meta["state"]["step"] == 10
    assert {"epoch.perm", "epoch.sums"} <= set(tensors)
    # (the armed objective has fired; from here on it only calls the real one)
    resume(run_dir, data_dir=fake_mnist, progress=False, log=quiet)
    assert_same_run(run_dir, tmp_path / "straight")


def test_ctrl_c_on_the_last_step_of_an_epoch_finishes_that_epoch(fake_mnist, tmp_path, sigint_at_step):
    sigint_at_step(7)
    with pytest.raises(TrainingInterrupted, match="interrupted after epoch 1; saved its checkpoint"):
        train(tiny(), tmp_path / "run", data_dir=fake_mnist, progress=False, log=quiet)
    _, meta = load_tensors(checkpoint_paths(tmp_path / "run")[0])
    assert meta["state"]["epoch"] == 1 and "batch" not in meta["state"]


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_last_checkpoint(fake_mnist, tmp_path, sigint_at_step):
    sigint_at_step(7 + 3, times=2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "run", data_dir=fake_mnist, progress=False, log=quiet)
    [only] = checkpoint_paths(tmp_path / "run")
    _, meta = load_tensors(only)
    assert meta["state"]["epoch"] == 1
