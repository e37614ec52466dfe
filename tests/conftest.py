"""Shared fixtures: tiny seeded fake MNIST written as real IDX files, and the real MNIST root."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from vaelab import data as vdata

FAKE_TRAIN = 300  # images in the fake "official training set"
FAKE_TEST = 100
FAKE_VALID = 100  # use RunConfig(valid_size=FAKE_VALID) with the fake data
# The real MNIST root as given when the tests started (fixtures may point $VAELAB_DATA at fake data later).
REAL_DATA = os.environ.get(vdata.ENV_DATA)



@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test, and every process a test starts, gets a cache directory of this session instead of the
    user's: a test's probed linear kernel or classifier must not become the machine's (a probe timed while
    the tests load the cores once cached oneDNN for later real runs). Tests that need their own set it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path_factory.mktemp("cache")))
        yield

def idx_bytes(array: np.ndarray) -> bytes:
    """uint8 array (N,) or (N, 28, 28) -> IDX bytes."""
    magic = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic + dims + array.astype(np.uint8).tobytes()


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images of 10 distinct stroke patterns (class = pattern) with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.float64)
    for k, label in enumerate(labels):
        row = 4 + 2 * label + rng.integers(-1, 2)
        images[k, row:row + 3, 4:24] = 1.0  # a horizontal bar whose height encodes the class
        images[k, 4:24, 4 + 2 * label:7 + 2 * label] = 0.8  # and a vertical one
    images = np.clip(images + rng.normal(0, 0.05, images.shape), 0, 1)
    return (images * 255).astype(np.uint8), labels


def write_fake_dataset(root: Path, spec: vdata.DatasetSpec, *, gz: bool = False, seed: int = 0,
                       n_train: int = FAKE_TRAIN) -> dict[str, Path]:
    """Write the four IDX files of `spec` under root/<folder>/raw; returns role -> path."""
    raw = root / spec.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = fake_digits(n_train, seed)
    test_x, test_y = fake_digits(FAKE_TEST, seed + 1)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    paths = {}
    for role, f in spec.files.items():
        blob = idx_bytes(arrays[role])
        path = raw / (f.name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
        paths[role] = path
    return paths


def trust_files(monkeypatch: pytest.MonkeyPatch, name: str, paths: dict[str, Path]) -> None:
    """Make vaelab accept these fake files by replacing the official sums with theirs."""
    spec = vdata.SPECS[name]
    files = {}
    for role, f in spec.files.items():
        blob = paths[role].read_bytes()
        raw_blob = gzip.decompress(blob) if paths[role].suffix == ".gz" else blob
        files[role] = dataclasses.replace(f, md5=hashlib.md5(raw_blob).hexdigest(),
                                          gz_md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(vdata.SPECS, name, dataclasses.replace(spec, files=files))


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding tiny fake MNIST IDX files that vaelab accepts; no real data needed."""
    root = tmp_path / "data"
    paths = write_fake_dataset(root, vdata.SPECS["mnist"])
    trust_files(monkeypatch, "mnist", paths)
    monkeypatch.delenv(vdata.ENV_DATA, raising=False)
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))
    return root


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real MNIST root ($VAELAB_DATA). Fails loudly in CI (VAELAB_REQUIRE_MNIST=1) if missing."""
    root = REAL_DATA
    raw = Path(root) / "MNIST" / "raw" if root else None
    if raw is None or not raw.is_dir():
        message = (f"real MNIST not found (set {vdata.ENV_DATA} to a root holding MNIST/raw/; "
                   f"CI uses ../shared/data)")
        if os.environ.get("VAELAB_REQUIRE_MNIST") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(root)


def run_in_process(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `vaelab argv`, run in this process."""
    from vaelab.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
