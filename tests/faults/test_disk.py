"""A full disk during a checkpoint write leaves the previous checkpoint intact and exits 1 with a clear
error; an output directory that cannot be written is an error before training starts."""

import errno
import os
from pathlib import Path

import pytest

from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.runfiles import read_metrics

from .faultkit import SMALL_ARGS, assert_one_clear_line, assert_same_run, run_cli, temp_files


def test_disk_full_in_a_checkpoint_write_keeps_the_previous_one_and_exits_1(trusted_cli_mnist, small_reference,
                                                                          tmp_path, monkeypatch):
    real_fsync = os.fsync
    checkpoint_writes = {"n": 0}

    def disk_full_on_second_checkpoint(fd: int) -> None:
        # The data sits in the page cache until fsync, which is where a full disk reports ENOSPC.
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".step-"):
            checkpoint_writes["n"] += 1
            if checkpoint_writes["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_second_checkpoint)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["train", *SMALL_ARGS, "--data-dir", trusted_cli_mnist, "--out", run_dir])
    assert code == 1
    assert_one_clear_line(err, f"{run_dir}/checkpoints/step-000000040.safetensors: No space left on device; "
                               f"training stopped in epoch 2", f"resume with: vaelab train --resume {run_dir}")
    [previous] = checkpoint_paths(run_dir)
    assert load_tensors(previous)[1]["state"]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]
    assert temp_files(run_dir) == []
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    code, _, err = run_cli(["train", "--resume", run_dir, "--data-dir", trusted_cli_mnist])
    assert code == 0, err
    assert_same_run(run_dir, small_reference)


@pytest.mark.parametrize("where", ["inside a file", "in a directory that cannot be written"])
def test_an_output_directory_that_cannot_be_written_is_an_error_before_training(where, trusted_cli_mnist,
                                                                                tmp_path):
    if where == "inside a file":
        (tmp_path / "file").write_text("not a directory")
        out, needle = tmp_path / "file" / "run", "cannot create the run directory"
    else:
        out, needle = tmp_path / "read-only", "cannot write to the run directory"
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):  # root ignores permissions; nobody can create folders in /proc/self
            out, needle = Path("/proc/self/vaelab-run"), "cannot create the run directory"
    code, _, err = run_cli(["train", *SMALL_ARGS, "--data-dir", trusted_cli_mnist, "--out", out])
    assert code == 2  # fixable in the command (another --out): bad input, found before any work
    assert_one_clear_line(err, f"{out}: {needle}")
    assert "epoch 1/" not in err
    assert not (out / "config.json").exists()
