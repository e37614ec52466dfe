"""Your own images: folders (flat, class sub-folders, train/ + test/) and arrays, the decode cache, splits,
and every kind of bad input, on small images generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import data as vdata
from vaelab import sources
from vaelab.config import ConfigError, RunConfig
from vaelab.data import DataError, load_data, source_splits


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))


def blobs(n: int, size=(12, 10), colour: bool = False, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, H, W) or (n, H, W, 3): a bright square at a random place on a dark ground."""
    rng = np.random.default_rng(seed)
    h, w = size
    x = rng.integers(0, 40, (n, h, w, 3 if colour else 1), dtype=np.uint8)
    for k in range(n):
        r, c = rng.integers(0, h - 4), rng.integers(0, w - 4)
        x[k, r:r + 4, c:c + 4] = rng.integers(150, 256, 3 if colour else 1)
    return x if colour else x[..., 0]


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img", fmt: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, a in enumerate(images):
        path = folder / f"{prefix}{k:04d}.{fmt}"
        Image.fromarray(a).save(path)
        paths.append(path)
    return paths


def test_flat_grey_folder_decodes_exactly_and_splits_with_the_seed(tmp_path):
    images = blobs(40)
    write_pngs(tmp_path / "flat", images)
    splits = source_splits(f"folder:{tmp_path / 'flat'}", seed=3, valid_fraction=0.25, test_fraction=0.1)
    assert splits.image_shape == (1, 12, 10) and splits.classes == ()
    assert (len(splits.train_x), len(splits.valid_x), len(splits.test_x)) == (26, 10, 4)
    together = torch.cat([splits.train_x, splits.valid_x, splits.test_x])
    assert together.dtype == torch.uint8
    # every image comes back byte for byte, each in exactly one split
    assert sorted(map(bytes, together.numpy())) == sorted(bytes(a.reshape(-1)) for a in images)
    assert (splits.train_y == -1).all()  # a flat folder has no labels
    again = source_splits(f"folder:{tmp_path / 'flat'}", seed=3, valid_fraction=0.25, test_fraction=0.1)
    assert torch.equal(again.valid_x, splits.valid_x)
    other = source_splits(f"folder:{tmp_path / 'flat'}", seed=4, valid_fraction=0.25, test_fraction=0.1)
    assert not torch.equal(other.valid_x, splits.valid_x)


def test_colour_class_folders_give_sorted_labels_and_three_channels(tmp_path):
    root = tmp_path / "pets"
    for name, seed in (("dog", 1), ("cat", 2), ("bird", 3)):
        write_pngs(root / name, blobs(10, colour=True, seed=seed), fmt="bmp" if name == "cat" else "png")
    decoded = sources.read_source(f"folder:{root}", cache=None, log=lambda m: None)
    assert decoded.classes == ("bird", "cat", "dog") and decoded.x.shape == (30, 3, 12, 10)
    assert np.bincount(decoded.y).tolist() == [10, 10, 10]
    first_dog = np.asarray(Image.open(root / "dog" / "img0000.png")).transpose(2, 0, 1)
    assert np.array_equal(decoded.x[decoded.y == 2][0], first_dog)
    grey = sources.read_source(f"folder:{root}", channels=1, cache=None, log=lambda m: None)
    assert grey.x.shape == (30, 1, 12, 10) and "colour images converted to grey" in " ".join(grey.notes)


def test_rgb_files_holding_grey_pixels_count_as_grey_and_jpeg_tiff_read(tmp_path):
    root = tmp_path / "mixed"
    grey = blobs(4)
    write_pngs(root, np.repeat(grey[..., None], 3, axis=-1), prefix="rgb")  # RGB files, R = G = B
    write_pngs(root, grey, prefix="tif", fmt="tiff")
    write_pngs(root, grey, prefix="jpg", fmt="jpg")
    decoded = sources.read_source(f"folder:{root}", cache=None, log=lambda m: None)
    assert decoded.x.shape == (12, 1, 12, 10)


def test_own_train_and_test_folders_are_kept(tmp_path):
    root = tmp_path / "split"
    for part, n in (("train", 20), ("test", 6)):
        for name in ("a", "b"):
            write_pngs(root / part / name, blobs(n, seed=n + len(name)), prefix=f"{part}{name}")
    config = RunConfig(dataset=f"folder:{root}", binarize="none", valid_fraction=0.25)
    data = load_data(config)
    assert (len(data.train), len(data.valid), len(data.test)) == (30, 10, 12)
    assert data.splits.classes == ("a", "b") and sorted(data.splits.test_y.tolist()) == [0] * 6 + [1] * 6


def test_mixed_sizes_name_two_files_unless_resized(tmp_path):
    root = tmp_path / "sizes"
    write_pngs(root, blobs(3, size=(12, 10)), prefix="a")
    write_pngs(root, blobs(2, size=(16, 16)), prefix="b")
    with pytest.raises(DataError, match=r"images differ in size: .*a0000.png is 12x10, .*b0000.png is 16x16"):
        source_splits(f"folder:{root}")
    resized = sources.read_source(f"folder:{root}", image_size=(8, 8), cache=None, log=lambda m: None)
    assert resized.x.shape == (5, 1, 8, 8) and any("resized to 8x8" in n for n in resized.notes)


def test_bad_files_are_named_or_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "bad"
    write_pngs(root, blobs(30))
    (root / "notes.png").write_text("this is not an image")
    good = (root / "img0003.png").read_bytes()
    (root / "truncated.png").write_bytes(good[:len(good) // 2])
    with pytest.raises(DataError, match=r"notes.png: not an image Pillow can read .*--skip-bad"):
        source_splits(f"folder:{root}")
    (root / "notes.png").unlink()
    with pytest.raises(DataError, match=r"truncated.png: truncated or damaged image"):
        source_splits(f"folder:{root}")
    (root / "notes.png").write_text("this is not an image")
    splits = source_splits(f"folder:{root}", skip_bad=True)
    assert len(splits.train_x) + len(splits.valid_x) + len(splits.test_x) == 30
    assert "skipped 2 bad files" in capsys.readouterr().err


def test_empty_folder_missing_folder_and_files_beside_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no image files in it"):
        source_splits(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="nowhere: no such folder"):
        source_splits(f"folder:{tmp_path / 'nowhere'}")
    root = tmp_path / "messy"
    write_pngs(root / "cls", blobs(3))
    write_pngs(root, blobs(1), prefix="loose")
    with pytest.raises(DataError, match=r"holds files \(loose0000.png\) beside class sub-folders \(cls\)"):
        source_splits(f"folder:{root}")


def test_sixteen_bit_palette_and_alpha_images_are_converted_and_said_once(tmp_path, capsys):
    root = tmp_path / "modes"
    root.mkdir()
    grey = blobs(6)
    for k in range(3):
        Image.fromarray(grey[k].astype(np.uint16) * 257).save(root / f"deep{k}.png")  # 16-bit grey
    Image.fromarray(grey[3]).convert("P").save(root / "palette.png")
    Image.fromarray(np.stack([grey[4]] * 3 + [np.full_like(grey[4], 128)], -1), "RGBA").save(root / "alpha.png")
    Image.fromarray(np.stack([grey[5], np.full_like(grey[5], 200)], -1), "LA").save(root / "grey_alpha.png")
    decoded = sources.read_source(f"folder:{root}", cache=None)
    out = capsys.readouterr().err
    assert out.count("16-bit images scaled to 8 bits") == 1 and "3 16-bit" in out
    assert out.count("palette images converted") == 1 and out.count("alpha dropped") == 1
    assert decoded.x.shape == (6, 1, 12, 10)  # all of them grey underneath
    # files in name order: alpha, deep0-2, grey_alpha, palette; 16-bit v·257 comes back as v exactly
    assert np.array_equal(decoded.x[1:4, 0], grey[:3]) and np.array_equal(decoded.x[5, 0], grey[3])


def test_too_large_for_memory_is_refused_up_front_with_the_number(tmp_path, monkeypatch):
    write_pngs(tmp_path / "big", blobs(10))
    monkeypatch.setattr(sources, "available_memory", lambda: 1000)
    with pytest.raises(DataError, match=r"10 images of 1x12x10 need about 0.0 GB .* only 0.0 GB are available"):
        source_splits(f"folder:{tmp_path / 'big'}")
    np.savez(tmp_path / "big.npz", x=blobs(10))
    with pytest.raises(DataError, match="need about"):
        source_splits(f"npz:{tmp_path / 'big.npz'}")


def test_the_cache_is_used_and_a_changed_folder_is_decoded_again(tmp_path, capsys):
    root = tmp_path / "cached"
    paths = write_pngs(root, blobs(12))
    first = source_splits(f"folder:{root}")
    assert "decoded 12 images" in capsys.readouterr().err
    cached = list((tmp_path / "cache" / "sources").glob("*.npz"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".*tmp"))  # written atomically, no leftovers
    second = source_splits(f"folder:{root}")
    assert "decoded copy from" in capsys.readouterr().err
    assert torch.equal(first.train_x, second.train_x) and first.fingerprint == second.fingerprint
    Image.fromarray(np.full((12, 10), 255, dtype=np.uint8)).save(paths[0])  # one file changes
    third = source_splits(f"folder:{root}")
    assert "changed since it was cached" in capsys.readouterr().err
    assert third.fingerprint != first.fingerprint
    assert 255 * 120 in torch.cat([third.train_x, third.valid_x, third.test_x]).int().sum(1).tolist()


def test_arrays_grey_colour_float_and_labels(tmp_path):
    colour = blobs(20, colour=True)
    np.savez(tmp_path / "c.npz", x=colour, y=np.arange(20) % 4)
    splits = source_splits(f"npz:{tmp_path / 'c.npz'}", valid_fraction=0.2, test_fraction=0.2)
    assert splits.image_shape == (3, 12, 10) and splits.train_x.dtype == torch.uint8
    assert sorted(torch.cat([splits.train_y, splits.valid_y, splits.test_y]).tolist()) == sorted(np.arange(20) % 4)
    np.save(tmp_path / "g.npy", blobs(20).astype(np.float32) / 255)
    grey = source_splits(f"npz:{tmp_path / 'g.npy'}")
    assert grey.image_shape == (1, 12, 10) and grey.train_x.dtype == torch.float32 and grey.train_x.max() <= 1
    data = load_data(RunConfig(dataset=f"npz:{tmp_path / 'g.npy'}", likelihood="continuous-bernoulli"))
    assert data.binarize == "none" and data.image_shape == (1, 12, 10)


@pytest.mark.parametrize("x, message", [
    (np.zeros((5, 4), dtype=np.uint8), r"x has shape \(5, 4\); expected x of shape \(N, H, W\)"),
    (np.zeros((5, 4, 4, 2), dtype=np.uint8), r"x has shape \(5, 4, 4, 2\)"),
    (np.zeros((5, 4, 4), dtype=np.int64), "x is int64"),
    (np.full((5, 4, 4), 2.0), r"x\[0\] has values outside \[0, 1\]"),
    (np.zeros((0, 4, 4), dtype=np.uint8), "holds no images"),
])
def test_bad_arrays_get_one_clear_message(tmp_path, x, message):
    np.savez(tmp_path / "a.npz", x=x)
    with pytest.raises(DataError, match=message):
        source_splits(f"npz:{tmp_path / 'a.npz'}")


def test_bad_array_files(tmp_path):
    np.savez(tmp_path / "nox.npz", images=np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="no array named x in it .found images"):
        source_splits(f"npz:{tmp_path / 'nox.npz'}")
    np.savez(tmp_path / "y.npz", x=np.zeros((3, 4, 4), dtype=np.uint8), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match=r"y has shape \(2,\)"):
        source_splits(f"npz:{tmp_path / 'y.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable .npz file"):
        source_splits(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataError, match="an array source is an .npz"):
        source_splits(f"npz:{tmp_path / 'junk.txt'}")


def test_config_records_the_source_options_and_old_configs_load_as_mnist():
    old = {"model": "vae", "objective": "paper", "latent_dim": 2, "hidden": [512, 256], "epochs": 20,
           "batch_size": 512, "lr": 0.002, "beta": 1.0, "binarize": "dynamic", "dataset": "mnist", "seed": 0,
           "eval_seed": 1234, "valid_size": 10000, "n_pixels": 784}  # a config.json of vaelab 0.2
    c = RunConfig.from_dict(old)
    assert (c.image_shape, c.arch, c.likelihood) == ((1, 28, 28), "mlp", "bernoulli")
    assert RunConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="binarized pixels are binary"):
        RunConfig(likelihood="gaussian", binarize="dynamic")
    with pytest.raises(ConfigError, match="names no path"):
        RunConfig(dataset="folder:")
    with pytest.raises(ConfigError, match="valid fraction"):
        RunConfig(dataset="npz:x.npz", valid_fraction=0.6, test_fraction=0.5)
