"""Executors for reproduce's independent runs: local worker processes and Ray give the runs that one
process gives, byte for byte; a failing or killed run is reported while the others finish."""

import dataclasses
import os
import signal

import pytest

from vaelab import executors
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.reproduce import Executor, Progress, RunSpec, _train_in_parallel, ensure_run
from vaelab.runfiles import read_metrics


def toy(x: int) -> int:
    """A job for the executor tests: doubles x; 13 raises, 99 kills its own process."""
    if x == 13:
        raise ValueError("unlucky")
    if x == 99:
        os.kill(os.getpid(), signal.SIGKILL)
    return 2 * x


def test_worker_processes_report_failures_and_deaths_while_the_others_finish():
    outcomes = dict(executors.processes(toy, [(1,), (13,), (99,), (4,)], workers=2))
    assert outcomes[0] == ("ok", 2) and outcomes[3] == ("ok", 8)
    assert outcomes[1][0] == "error" and outcomes[1][1].startswith("ValueError: unlucky")
    assert outcomes[2] == ("error", "its worker process died (killed by signal SIGKILL)")


def test_each_worker_gets_its_share_of_the_cores():
    cores = os.cpu_count() or 1
    assert executors.threads_per_job(1) == cores and executors.threads_per_job(cores * 4) == 1
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        list(executors.processes(toy, [(1,)], workers=0))


@pytest.fixture(scope="module")
def specs():
    """Two small runs that train and one that diverges (NaN), on the first 2000 MNIST training images."""
    base = RunConfig(model="vae", objective="elbo", latent_dim=2, hidden=(32, 16), epochs=1, batch_size=100)
    return [RunSpec(base, 2000),
            RunSpec(dataclasses.replace(base, model="autoencoder", objective="reconstruction"), 2000),
            RunSpec(dataclasses.replace(base, lr=1e9, seed=3), 2000)]


@pytest.fixture(scope="module")
def serial_runs(specs, mnist_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("serial")
    data = load_data(specs[0].config, mnist_root)
    for spec in specs[:2]:
        ensure_run(spec, runs / spec.name, data=data)
    return runs


@pytest.mark.parametrize("executor", [Executor("processes", workers=2), Executor("ray")], ids=["processes", "ray"])
def test_executors_train_the_runs_one_process_trains(executor, specs, serial_runs, mnist_root, tmp_path):
    what: dict = {}
    failures = _train_in_parallel(specs, tmp_path, [1, 1, 1], executor, data_dir=mnist_root, force=False,
                                  device="cpu", bar=Progress(3, 3, enabled=False), what=what)
    assert what == {specs[0].name: "trained", specs[1].name: "trained"}
    assert [name for name, _ in failures] == [specs[2].name] and "non-finite loss" in failures[0][1]
    for spec in specs[:2]:
        assert read_metrics(tmp_path / spec.name) == read_metrics(serial_runs / spec.name)
        ours, theirs = (d / spec.name / "model.safetensors" for d in (tmp_path, serial_runs))
        assert ours.read_bytes() == theirs.read_bytes()
    # a second call reuses the finished runs and retries the failed one
    failures = _train_in_parallel(specs, tmp_path, [1, 1, 1], executor, data_dir=mnist_root, force=False,
                                  device="cpu", bar=Progress(3, 3, enabled=False), what=what)
    assert what[specs[0].name] == what[specs[1].name] == "reused" and len(failures) == 1
