"""Damaged data: each fault gives one clear line naming the file and what is wrong, exit code 1 (2 for a
usage error), no traceback, and nothing written; under `python -O` too (the checks are not asserts)."""

import ast
import gzip
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import vaelab
from vaelab import data as vdata

from .faultkit import assert_one_clear_line, current_sums, finish, run_cli, start

TRAIN_IMAGES, TEST_IMAGES, TEST_LABELS = "train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def damage(case: str, raw: Path) -> tuple[int, list[str]]:
    """Damage the fake MNIST files in `raw` as `case` says; (expected exit code, texts the error must hold)."""
    images = raw / TRAIN_IMAGES
    blob = bytearray(images.read_bytes())
    if case == "truncated":
        images.write_bytes(blob[:len(blob) // 2])
        return 1, [TRAIN_IMAGES, "truncated: header says 300 x 28 x 28"]
    if case == "wrong magic":
        blob[3] = 0x04
        images.write_bytes(blob)
        return 1, [TRAIN_IMAGES, "wrong magic number 0x00000804"]
    if case == "wrong count":
        blob[4:8] = (301).to_bytes(4, "big")
        images.write_bytes(blob)
        return 1, [TRAIN_IMAGES, "header says 301 x 28 x 28"]
    if case == "altered pixel":
        blob[-1] ^= 0xFF
        images.write_bytes(blob)
        return 1, [TRAIN_IMAGES, "MD5 does not match"]
    if case == "random bytes":
        path = raw / TEST_IMAGES
        path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
        return 1, [TEST_IMAGES, "wrong magic number"]
    if case == "bad gzip":
        labels = raw / TEST_LABELS
        packed = bytearray(gzip.compress(labels.read_bytes(), mtime=0))
        packed[len(packed) // 2] ^= 0xFF
        labels.unlink()
        (raw / (TEST_LABELS + ".gz")).write_bytes(packed)
        return 1, [TEST_LABELS + ".gz", "not a valid gzip file"]
    if case == "missing file":
        (raw / TEST_LABELS).unlink()
        return 2, ["mnist files not found in --data-dir"]  # fixable in the command: --data-dir
    if case == "unknown dataset (usage)":
        return 2, ["unknown dataset 'mnistt'"]
    raise ValueError(case)


CASES = ["truncated", "wrong magic", "wrong count", "altered pixel", "random bytes", "bad gzip", "missing file",
         "unknown dataset (usage)"]


def train_args(case: str, root: Path, out: Path) -> list:
    dataset = ["--dataset", "mnistt"] if "usage" in case else []
    return ["train", "--data-dir", root, "--out", out, "--epochs", "1", "--hidden", "8", *dataset]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def refuse_downloads(*args, **kwargs):
    raise urllib.error.URLError("offline (test)")


@pytest.mark.parametrize("case", CASES)
def test_damaged_data_gives_one_clear_line_and_writes_nothing(case, fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(vdata.urllib.request, "urlopen", refuse_downloads)
    code, needles = damage(case, fake_mnist / "MNIST" / "raw")
    before = tree(fake_mnist)
    got, out, err = run_cli(train_args(case, fake_mnist, tmp_path / "run"))
    assert got == code, err
    assert_one_clear_line(err, *needles)
    assert not (tmp_path / "run").exists()
    assert tree(fake_mnist) == before
    assert not (tmp_path / "cache").exists()  # the fixture's VAELAB_CACHE: no download attempt left files


def test_the_same_under_python_dash_O(fake_mnist, tmp_path):
    """Every case again in a child `python -O`, which strips assert statements."""
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps(current_sums()))
    commands, expected = [], []
    for i, case in enumerate(CASES):
        root = tmp_path / f"data{i}"
        shutil.copytree(fake_mnist, root)
        expected.append(damage(case, root / "MNIST" / "raw"))
        commands.append([str(a) for a in train_args(case, root, tmp_path / f"run{i}")])
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    code, out, err = finish(start(sums, ["--each", tmp_path / "commands.json"], tmp=tmp_path, optimize=True))
    assert code == 0, err
    report = json.loads(out)
    assert report["optimize"] == 1  # asserts really were stripped
    for i, (case, (got, err), (want, needles)) in enumerate(zip(CASES, report["results"], expected, strict=True)):
        assert got == want, (case, err)
        assert_one_clear_line(err, *needles)
        assert not (tmp_path / f"run{i}").exists()


def test_no_assert_statements_in_the_package():
    """The checks must survive `python -O`, which strips assert statements."""
    package = Path(vaelab.__file__).parent
    found = [f"{path.name}:{node.lineno}" for path in sorted(package.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert found == []
