"""Fixtures of the fault suite; helpers are in faultkit.py, the child-process harness in fakecli.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fakecli import trusted_specs
from faultkit import RUN_ARGS, finish, start, sums_of, wait_until, write_cli_sized_mnist

from vaelab import data as vdata


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
def reference_run(cli_mnist, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """(run directory, seconds its training took) of RUN_ARGS run straight through in a child process."""
    root, sums = cli_mnist
    tmp = tmp_path_factory.mktemp("reference")
    run_dir = tmp / "run"
    proc = start(sums, ["train", *RUN_ARGS, "--data-dir", root, "--out", run_dir], tmp=tmp)
    wait_until(lambda: (run_dir / "config.json").exists(), proc)
    began = time.monotonic()
    code, _, err = finish(proc)
    assert code == 0, err
    return run_dir, time.monotonic() - began
