"""Data: IDX parsing (plain and gz), MD5 checks, look-up order, atomic checksummed download, splits,
binarization. All on small synthetic IDX files written by the test."""

import gzip
import io
import urllib.error
from pathlib import Path

import pytest
import torch

from conftest import FAKE_TEST, FAKE_TRAIN, FAKE_VALID, trust_files, write_fake_dataset
from vaelab import data as vdata
from vaelab.data import DataError, bernoulli_draw, load_splits, locate, pixel_data


def test_splits_hold_out_the_last_training_images(fake_mnist):
    splits = load_splits("mnist", fake_mnist, valid_size=FAKE_VALID)
    assert splits.train_x.shape == (FAKE_TRAIN - FAKE_VALID, 784) and splits.train_x.dtype == torch.uint8
    assert splits.valid_x.shape == (FAKE_VALID, 784)
    assert splits.test_x.shape == (FAKE_TEST, 784)
    assert len(splits.train_y) == FAKE_TRAIN - FAKE_VALID and splits.test_y.dtype == torch.int64
    raw = fake_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    last = torch.frombuffer(bytearray(raw.read_bytes()[16:]), dtype=torch.uint8).view(-1, 784)[-FAKE_VALID:]
    assert torch.equal(splits.valid_x, last)


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist", "mnist"])
def test_gzipped_files_of_every_dataset(tmp_path, monkeypatch, name):
    paths = write_fake_dataset(tmp_path, vdata.SPECS[name], gz=True)
    trust_files(monkeypatch, name, paths)
    splits = load_splits(name, tmp_path, valid_size=FAKE_VALID, download=False)
    assert splits.train_x.shape == (FAKE_TRAIN - FAKE_VALID, 784)
    assert (tmp_path / vdata.SPECS[name].folder / "raw").is_dir()


def test_altered_file_fails_md5_naming_the_file(fake_mnist):
    path = fake_mnist / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    blob = bytearray(path.read_bytes())
    blob[500] ^= 0xFF  # one changed pixel: structure fine, content not the official file
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: MD5 does not match"):
        load_splits("mnist", fake_mnist, valid_size=FAKE_VALID, download=False)


def test_truncated_file_is_named(fake_mnist):
    path = fake_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated"):
        load_splits("mnist", fake_mnist, valid_size=FAKE_VALID, download=False)


def test_wrong_magic_and_bad_gzip(fake_mnist):
    path = fake_mnist / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x09\x01" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="wrong magic number"):
        load_splits("mnist", fake_mnist, valid_size=FAKE_VALID, download=False)
    path.unlink()
    (path.parent / (path.name + ".gz")).write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="not a valid gzip"):
        load_splits("mnist", fake_mnist, valid_size=FAKE_VALID, download=False)


def test_lookup_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    spec = vdata.SPECS["mnist"]
    for root in ("given", "env", "cache/data"):
        write_fake_dataset(tmp_path / root, spec)
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(vdata.ENV_DATA, str(tmp_path / "env"))
    assert locate(spec, tmp_path / "given", download=False) == tmp_path / "given" / "MNIST" / "raw"
    assert locate(spec, None, download=False) == tmp_path / "env" / "MNIST" / "raw"
    monkeypatch.delenv(vdata.ENV_DATA)
    assert locate(spec, None, download=False) == tmp_path / "cache" / "data" / "MNIST" / "raw"


@pytest.mark.parametrize("kind", ["missing", "empty", "a file", "incomplete"])
def test_an_explicit_data_dir_is_used_or_is_an_error_naming_it(kind, tmp_path, monkeypatch):
    """$VAELAB_DATA and the cache hold the files, but the user named --data-dir: it is never skipped."""
    spec = vdata.SPECS["mnist"]
    for root in ("env", "cache/data"):
        write_fake_dataset(tmp_path / root, spec)
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(vdata.ENV_DATA, str(tmp_path / "env"))
    given = tmp_path / "given"
    if kind == "empty":
        given.mkdir()
    elif kind == "a file":
        given.write_text("not a folder")
    elif kind == "incomplete":
        write_fake_dataset(given, spec)
        (given / "MNIST" / "raw" / spec.files["test_labels"].name).unlink()
    with pytest.raises(vdata.DataNotFoundError) as info:
        locate(spec, given, download=False)
    message = str(info.value)
    assert str(given) in message and str(tmp_path / "env") not in message
    lines = message.splitlines()
    assert len(lines) <= 5 and all(len(line) <= 160 for line in lines), message  # a few short lines


def test_offline_without_files_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(vdata.ENV_DATA, raising=False)
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(vdata.urllib.request, "urlopen", offline)
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError) as info:
        load_splits("mnist", tmp_path / "mine")
    message = str(info.value)
    assert str(tmp_path / "mine" / "MNIST" / "raw") in message and str(tmp_path / "cache") not in message
    assert "--data-dir" in message and "download failed" in message
    assert not list((tmp_path / "mine").rglob("*ubyte*"))  # nothing that looks like data was left
    with pytest.raises(DataError) as info:  # without --data-dir: $VAELAB_DATA (unset here), then the cache
        load_splits("mnist")
    message = str(info.value)
    assert str(tmp_path / "cache") in message and "download failed" in message
    assert all(len(line) <= 160 for line in message.splitlines()), message


def _serve(monkeypatch, blobs: dict[str, bytes]):
    """Replace urlopen with one that serves `blobs` by file name."""
    def urlopen(url, timeout):
        name = url.rsplit("/", 1)[1]
        if name not in blobs:
            raise urllib.error.URLError("404")
        return io.BytesIO(blobs[name])

    monkeypatch.setattr(vdata.urllib.request, "urlopen", urlopen)


def test_download_is_checksummed_and_atomic(tmp_path, monkeypatch):
    source = write_fake_dataset(tmp_path / "server", vdata.SPECS["mnist"], gz=True)
    trust_files(monkeypatch, "mnist", source)
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(vdata.ENV_DATA, raising=False)
    blobs = {p.name: p.read_bytes() for p in source.values()}
    corrupt = dict(blobs)
    corrupt["t10k-images-idx3-ubyte.gz"] = blobs["t10k-images-idx3-ubyte.gz"][:-10]
    _serve(monkeypatch, corrupt)
    with pytest.raises(DataError, match="MD5"):
        load_splits("mnist", None, valid_size=FAKE_VALID)
    raw = tmp_path / "cache" / "data" / "MNIST" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte.gz").exists()
    assert not list(raw.glob(".*part"))  # no temporary left behind
    _serve(monkeypatch, blobs)
    splits = load_splits("mnist", None, valid_size=FAKE_VALID)
    assert splits.test_x.shape == (FAKE_TEST, 784)
    assert gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes())[:4] == b"\x00\x00\x08\x03"


def test_dynamic_binarization_fixes_eval_sets_and_redraws_training(fake_mnist):
    splits = load_splits("mnist", fake_mnist, valid_size=FAKE_VALID)
    a = pixel_data(splits, binarize="dynamic", eval_seed=3)
    b = pixel_data(splits, binarize="dynamic", eval_seed=3)
    assert torch.equal(a.valid, b.valid) and torch.equal(a.test, b.test)
    assert set(a.valid.unique().tolist()) <= {0.0, 1.0}
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(len(a.train))
    first, second = a.train_batch(idx, g), a.train_batch(idx, g)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    grey = pixel_data(splits, binarize="none")
    assert torch.equal(grey.train_batch(idx, g), grey.train) and grey.valid.max() <= 1.0
    assert torch.equal(grey.valid, splits.valid_x.float() / 255)


def test_real_mnist_is_verified(mnist_root: Path):
    splits = load_splits("mnist", mnist_root, download=False)
    assert (len(splits.train_x), len(splits.valid_x), len(splits.test_x)) == (50000, 10000, 10000)
    assert splits.train_y[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST labels


def test_bernoulli_draw_has_the_bernoulli_distribution():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).expand(40000, 5)
    draw = bernoulli_draw(p, torch.Generator().manual_seed(0))
    assert set(draw.unique().tolist()) <= {0.0, 1.0}
    assert draw[:, 0].sum() == 0 and draw[:, 4].sum() == 40000  # p = 0 never, p = 1 always
    torch.testing.assert_close(draw.mean(0), p[0], atol=0.01, rtol=0)  # sd of a mean <= 0.0025
    again = bernoulli_draw(p, torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)


def test_content_is_verified_not_the_compression(mnist_root: Path, tmp_path):
    # A distribution that re-gzips the official files (as Debian does for Fashion-MNIST) changes the .gz
    # sum but not the content: accepted. One changed byte of content is refused, gzipped or not.
    f = vdata.SPECS["mnist"].files["test_labels"]
    official = vdata._present(mnist_root / "MNIST" / "raw", f)
    content = gzip.decompress(official.read_bytes()) if official.suffix == ".gz" else official.read_bytes()
    regzipped = tmp_path / "regzipped" / (f.name + ".gz")
    regzipped.parent.mkdir()
    regzipped.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    assert vdata.hashlib.md5(regzipped.read_bytes()).hexdigest() != f.gz_md5  # really a different .gz
    labels = vdata.read_idx(regzipped, f)
    assert labels.shape == (10000,) and labels[:5].tolist() == [7, 2, 1, 0, 4]  # MNIST's first test labels
    altered = bytearray(content)
    altered[100] = (altered[100] + 1) % 10  # still a valid label: only the checksum can tell
    for name, blob in (("altered.gz", gzip.compress(bytes(altered))), ("altered", bytes(altered))):
        path = tmp_path / name / f.name
        path.parent.mkdir()
        path = path.with_name(f.name + (".gz" if name.endswith(".gz") else ""))
        path.write_bytes(blob)
        with pytest.raises(DataError, match=f"{f.name}.*: MD5 does not match the official {f.md5}"):
            vdata.read_idx(path, f)


def test_every_known_dataset_checks_content_sums_where_known():
    for name, spec in vdata.SPECS.items():
        for f in spec.files.values():
            assert f.gz_md5 and (f.md5 is not None or name == "kmnist"), (name, f.name)
    assert vdata.SPECS["fashion-mnist"].files["train_images"].md5 == "f4a8712d7a061bf5bd6d2ca38dc4d50a"
