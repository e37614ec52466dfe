"""Executors for reproduce's independent runs: local worker processes and Ray give the runs that one
process gives, byte for byte; a failing or killed run is reported while the others finish."""

import dataclasses
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from vaelab import executors
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.executors import threads_per_job
from vaelab.reproduce import Executor, Progress, RunSpec, _train_in_parallel, default_executor, ensure_run
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


def stops_when_asked(marker: str) -> str:
    """A job for the executor tests: "" returns at once; else it leaves `marker`.running, waits for Ctrl-C
    (SIGINT), then leaves `marker`.stopped and returns."""
    if not marker:
        return "done"
    Path(marker + ".running").touch()
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        Path(marker + ".stopped").touch()
    return "stopped"


@pytest.fixture
def interactive_sigint():
    """SIGINT handled as in an interactive Python for the test's duration, whatever this process inherited.
    A background job of a non-interactive shell (`make test &`) starts with SIGINT ignored; spawned workers
    inherit that and, by design, keep ignoring it (`executors._child`): these tests are about the usual case."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("interactive_sigint")
def test_a_caller_that_stops_early_asks_the_running_workers_to_stop(tmp_path):
    markers = [str(tmp_path / "a"), str(tmp_path / "b")]
    outcomes = executors.processes(stops_when_asked, [("",), (markers[0],), (markers[1],)], workers=3)
    assert next(outcomes) == (0, ("ok", "done"))  # (the caller's loop then ends early: a bug, a break)
    deadline = time.monotonic() + 60
    while not all(Path(m + ".running").exists() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    outcomes.close()
    # each got SIGINT and ended by itself (a terminated one leaves no marker), well before the grace ran out
    assert all(Path(m + ".stopped").exists() for m in markers)
    assert time.monotonic() - started < executors.STOP_GRACE_SECONDS


@pytest.mark.usefixtures("interactive_sigint")
def test_a_ctrl_c_while_a_worker_starts_stops_its_job_before_it_begins(tmp_path):
    """Blocked, not ignored, while the fresh interpreter imports: no traceback from it, and no job that goes on
    as if no Ctrl-C had come."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    marker = tmp_path / "job"
    process = context.Process(target=executors._child, args=(stops_when_asked, (str(marker),), send), daemon=True)
    executors._start(process)
    send.close()
    os.kill(process.pid, signal.SIGINT)  # (it is still importing torch)
    process.join(60)
    assert not process.is_alive() and receive.recv() == ("error", "interrupted") and process.exitcode == 0
    assert not Path(str(marker) + ".running").exists()


def test_each_worker_gets_its_share_of_the_cores():
    cores = executors.available_cores()
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
    """runs_on(threads): the runs trained one after another in this process on `threads` threads (the
    thread count moves the last bits on some CPUs: MKL's AVX-512 kernels on an Intel Xeon)."""
    data, made = load_data(specs[0].config, mnist_root), {}

    def runs_on(threads: int) -> Path:
        if threads not in made:
            made[threads] = tmp_path_factory.mktemp(f"serial-{threads}")
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for spec in specs[:2]:
                    ensure_run(spec, made[threads] / spec.name, data=data)
            finally:
                torch.set_num_threads(before)
        return made[threads]
    return runs_on


@pytest.mark.parametrize("executor", [Executor("processes", workers=2), Executor("ray")], ids=["processes", "ray"])
def test_executors_train_the_runs_one_process_trains(executor, specs, serial_runs, mnist_root, tmp_path):
    what: dict = {}
    failures = _train_in_parallel(specs, tmp_path, [1, 1, 1], executor, data_dir=mnist_root, force=False,
                                  device="cpu", bar=Progress(3, 3, enabled=False), what=what)
    assert what == {specs[0].name: "trained", specs[1].name: "trained"}
    assert [name for name, _ in failures] == [specs[2].name] and "non-finite loss" in failures[0][1]
    serial = serial_runs(threads_per_job(executor.workers if executor.kind == "processes" else 1))
    for spec in specs[:2]:
        assert read_metrics(tmp_path / spec.name) == read_metrics(serial / spec.name)
        ours, theirs = (d / spec.name / "model.safetensors" for d in (tmp_path, serial))
        assert ours.read_bytes() == theirs.read_bytes()
    # a second call reuses the finished runs and retries the failed one
    failures = _train_in_parallel(specs, tmp_path, [1, 1, 1], executor, data_dir=mnist_root, force=False,
                                  device="cpu", bar=Progress(3, 3, enabled=False), what=what)
    assert what[specs[0].name] == what[specs[1].name] == "reused" and len(failures) == 1


def test_reproduce_trains_in_two_workers_by_default_on_a_cpu_with_two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert executors.available_cores() == 2 and default_executor("cpu") == Executor("processes", workers=2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})  # (a machine of 8 cores lets this run on one)
    assert executors.available_cores() == 1 and default_executor("cpu") == Executor()
