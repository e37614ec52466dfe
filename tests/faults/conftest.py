"""Fixtures of the fault suite; helpers are in faultkit.py, the child-process harness in fakecli.py."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from vaelab import data as vdata

from .fakecli import trusted_specs
from .faultkit import FAULT_KERNEL, RUN_ARGS, SMALL_ARGS, finish, run_cli, start, sums_of, write_cli_sized_mnist


@contextlib.contextmanager
def one_thread():
    """One torch intra-op thread, as the child processes have (OMP_NUM_THREADS=1): on a busy two-core
    machine, OpenMP threads waiting for each other made these tiny runs 20-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread_one_kernel(monkeypatch: pytest.MonkeyPatch):
    """Every fault test trains with one thread and FAULT_KERNEL, as its children and references do
    (both restored afterwards, for the rest of the suite)."""
    for name, value in FAULT_KERNEL.items():
        monkeypatch.setenv(name, value)
    with one_thread():
        yield


@pytest.fixture(scope="session")
def cli_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, checksum JSON for fakecli.py) of fake MNIST sized for the CLI's default split.
    Written once per session; tests that damage files use `fake_mnist` instead."""
    base = tmp_path_factory.mktemp("cli-mnist")
    paths = write_cli_sized_mnist(base / "data")
    sums = base / "sums.json"
    sums.write_text(json.dumps(sums_of(paths)))
    return base / "data", sums


@pytest.fixture
def trusted_cli_mnist(cli_mnist, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make this process accept `cli_mnist` as fakecli.py makes a child accept it; its data root."""
    root, sums = cli_mnist
    for name, spec in trusted_specs(json.loads(sums.read_text())).items():
        monkeypatch.setitem(vdata.SPECS, name, spec)
    monkeypatch.delenv(vdata.ENV_DATA, raising=False)
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))
    return root


@pytest.fixture(scope="session")
def reference_run(cli_mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of RUN_ARGS trained straight through in a child process."""
    root, sums = cli_mnist
    tmp = tmp_path_factory.mktemp("reference")
    code, _, err = finish(start(sums, ["train", *RUN_ARGS, "--data-dir", root, "--out", tmp / "run"], tmp=tmp))
    assert code == 0, err
    return tmp / "run"


@pytest.fixture(scope="session")
def small_reference(cli_mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of SMALL_ARGS trained straight through in this process (torch threads as here)."""
    root, sums = cli_mnist
    run_dir = tmp_path_factory.mktemp("small-reference") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch, one_thread():  # (runs before the autouse fixture)
        for name, value in FAULT_KERNEL.items():
            monkeypatch.setenv(name, value)
        for name, spec in trusted_specs(json.loads(sums.read_text())).items():
            monkeypatch.setitem(vdata.SPECS, name, spec)
        code, _, err = run_cli(["train", *SMALL_ARGS, "--data-dir", root, "--out", run_dir])
    assert code == 0, err
    return run_dir
