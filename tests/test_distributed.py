"""Data-parallel training on CPU (gloo, loopback only): N ranks compute what one process computes,
rank 0 alone writes, a run resumes with another number of processes, and bad setups fail clearly.

Real processes on real MNIST (fails in CI if it is missing): torchrun for the normal path, and two
hand-started ranks (the environment torchrun would give them) where a test needs them to differ.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaelab.checkpoint import checkpoint_paths, load_tensors
from vaelab.distributed import World
from vaelab.runfiles import read_metrics

# 50000 training images / 1668 per global batch = 30 steps per epoch; a small model keeps it quick.
ARGS = ["--model", "vae", "--objective", "elbo", "--latent-dim", "2", "--hidden", "64,32", "--batch-size", "1668"]
VAELAB = [sys.executable, "-m", "vaelab"]


def environment(mnist_root: Path, **extra: str) -> dict:
    return {**os.environ, "VAELAB_DATA": str(mnist_root), "OMP_NUM_THREADS": "1", **extra}


def torchrun(n: int, args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               "-m", "vaelab", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args_per_rank: list[list[str]], env: dict) -> list[subprocess.Popen]:
    """Ranks started by hand with torchrun's environment variables (so that they can differ)."""
    port, size = str(free_port()), str(len(args_per_rank))
    return [subprocess.Popen([*VAELAB, *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": size,
                                                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r, args in enumerate(args_per_rank)]


def newest_model(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(checkpoint_paths(run)[0])
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def largest_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).norm() / a[k].double().norm().clamp_min(1e-30)) for k in a)


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


@pytest.fixture(scope="module")
def one_and_two(mnist_root, tmp_path_factory):
    """The same 30-step run made by one process and by two ranks."""
    tmp = tmp_path_factory.mktemp("ddp")
    env = environment(mnist_root)
    single = subprocess.run([*VAELAB, "train", *ARGS, "--epochs", "1", "--out", str(tmp / "one")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = torchrun(2, ["train", *ARGS, "--epochs", "1", "--out", str(tmp / "two")], env)
    assert double.returncode == 0, double.stderr
    return tmp, env, double


def test_two_ranks_compute_what_one_process_computes(one_and_two):
    tmp, _, double = one_and_two
    assert read_metrics(tmp / "two")[-1]["step"] == 30
    assert largest_relative_difference(newest_model(tmp / "one"), newest_model(tmp / "two")) < 1e-5
    assert files(tmp / "one") == files(tmp / "two")  # rank 0 wrote the same files, no rank wrote more
    one, two = read_metrics(tmp / "one")[-1], read_metrics(tmp / "two")[-1]
    assert two["valid_loss"] == pytest.approx(one["valid_loss"], abs=1e-3)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)  # sums gathered from both ranks
    assert double.stdout.count("1 epoch, best valid loss") == 1  # rank 0 speaks for the run


def test_a_two_rank_run_resumes_in_one_process(one_and_two):
    tmp, env, _ = one_and_two
    for name in ("one", "two"):
        done = subprocess.run([*VAELAB, "train", "--resume", str(tmp / name), "--epochs", "2"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in read_metrics(tmp / "two")] == [1, 2]
    assert largest_relative_difference(newest_model(tmp / "one"), newest_model(tmp / "two")) < 1e-5


def test_a_batch_that_does_not_split_is_refused_before_anything_is_written(mnist_root, tmp_path):
    args = [a if a != "1668" else "1667" for a in ARGS]
    done = torchrun(2, ["train", *args, "--epochs", "1", "--out", str(tmp_path / "run")], environment(mnist_root))
    assert done.returncode != 0
    assert "--batch-size 1667 does not split over 2 processes" in done.stderr
    assert not (tmp_path / "run").exists()


def test_ranks_with_different_configurations_are_refused(mnist_root, tmp_path):
    ranks = start_ranks([["train", *ARGS, "--epochs", "1", "--seed", str(seed), "--out", str(tmp_path / "run")]
                         for seed in (0, 1)], environment(mnist_root, VAELAB_DDP_TIMEOUT="60"))
    outputs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [1, 1]
    for _, err in outputs:
        assert "ranks 1 were started with another configuration than rank 0" in err
    assert not (tmp_path / "run").exists()


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(mnist_root, tmp_path):
    run = tmp_path / "run"
    ranks = start_ranks([["train", *ARGS, "--epochs", "50", "--out", str(run)]] * 2,
                        environment(mnist_root, VAELAB_DDP_TIMEOUT="30"))
    deadline = time.monotonic() + 180
    while not checkpoint_paths(run) and time.monotonic() < deadline:  # training is under way
        time.sleep(0.2)
    assert checkpoint_paths(run), "the ranks did not start training"
    ranks[1].send_signal(signal.SIGKILL)
    started = time.monotonic()
    _, err = ranks[0].communicate(timeout=120)
    assert ranks[0].returncode == 1 and time.monotonic() - started < 60  # no hang
    assert "rank 0 of 2 lost contact with the other ranks" in err
    assert err.count("\n") <= 2, err  # one line, not a traceback
    ranks[1].communicate()


def test_shards_split_a_batch_in_order():
    batch = torch.arange(10)
    parts = [World(r, 3).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch) and [len(p) for p in parts] == [4, 3, 3]
    assert World().shard(batch) is batch and not World().distributed and World().main


def test_iwae_noise_and_a_learned_prior_split_over_ranks_like_the_images(mnist_root, tmp_path):
    """IWAE's (B, K, D) noise is sharded along the batch as the images are; the prior's parameters, the
    warm-up and the cosine schedule are the same on every rank."""
    env = environment(mnist_root)
    args = ["--model", "vae", "--objective", "iwae", "--k", "3", "--prior", "mog:4", "--warmup", "1",
            "--lr-schedule", "cosine", "--latent-dim", "2", "--hidden", "64,32", "--batch-size", "1668",
            "--epochs", "1"]
    single = subprocess.run([*VAELAB, "train", *args, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = torchrun(2, ["train", *args, "--out", str(tmp_path / "two")], env)
    assert double.returncode == 0, double.stderr
    one, two = newest_model(tmp_path / "one"), newest_model(tmp_path / "two")
    assert "model.prior.means" in one
    # Not 1e-5 as above: Adam's first steps move a weight by about lr·sign(g) however small g is, and the
    # gradients of rarely lit border pixels are sums that nearly cancel, so the order one process and two
    # ranks sum them in flips a few. With torch's MKL kernel on an AMD EPYC (Zen 3) that gave 1.2e-4
    # (8 of the first layer's 50176 weights); noise not sharded like the images (each rank taking the
    # first rows of it) gave 0.23.
    assert largest_relative_difference(one, two) < 1e-3
    assert read_metrics(tmp_path / "two")[-1]["train_loss"] == pytest.approx(
        read_metrics(tmp_path / "one")[-1]["train_loss"], rel=1e-5)
