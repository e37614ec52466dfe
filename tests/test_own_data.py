"""Your own images end to end through the command and the API: a folder of 2,000 PNGs with a conv VAE,
a colour .npz with the continuous Bernoulli likelihood, and bad sources refused before anything is written."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from conftest import run_in_process as run
from vaelab import data as vdata


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))


def shapes(n: int, size: int, seed: int, colour: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images of a bright square (class 0) or a bright bar (class 1) at a random place."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.integers(0, 30, (n, size, size, 3), dtype=np.uint8)
    for k in range(n):
        r, c = rng.integers(0, size - 8, 2)
        colour_of = rng.integers(140, 256, 3) if colour else np.full(3, rng.integers(140, 256))
        if labels[k] == 0:
            x[k, r:r + 6, c:c + 6] = colour_of
        else:
            x[k, r:r + 8, c:c + 2] = colour_of
    return (x if colour else x[..., :1].repeat(1, -1)[..., 0]), labels


def test_a_folder_of_2000_pngs_trains_a_conv_vae_and_evaluates_samples_and_loads(tmp_path, capsys):
    images, labels = shapes(2000, 18, seed=0)  # 18 x 18: padded to 20 inside the conv network
    root = tmp_path / "pngs"
    for name in ("bar", "square"):
        (root / name).mkdir(parents=True)
    for k, (a, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(a).save(root / ("square" if label == 0 else "bar") / f"{k:05d}.png")
    run_dir = tmp_path / "run"
    code, out, err = run(["train", "--dataset", f"folder:{root}", "--arch", "conv", "--hidden", "64",
                          "--epochs", 2, "--batch-size", 64, "--lr", 3e-3, "--objective", "elbo", "--out", run_dir],
                         capsys)
    assert code == 0, err
    assert "decoded 2000 images of 1x18x18 in 2 classes" in err and "bits/dim (bernoulli)" in err
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["image_shape"] == [1, 18, 18] and config["classes"] == ["bar", "square"]
    assert config["arch"] == "conv" and config["valid_fraction"] == 0.1 and config["fingerprint"]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[1]["valid_loss"] < history[0]["valid_loss"]  # it learns
    seconds = [json.loads(line)["seconds"] for line in (run_dir / "timing.jsonl").read_text().splitlines()]
    with capsys.disabled():  # the measured numbers, for `pytest -s`
        print(f"\nconv VAE on 2000 18x18 PNGs: {seconds} s per epoch, valid loss "
              f"{[round(h['valid_loss'], 2) for h in history]} nats/image")

    code, out, err = run(["evaluate", run_dir, "--nll", "iwae", "--k", 50], capsys)
    assert code == 0, err
    assert "Bernoulli (binary pixels) likelihood" in out and "bits/dim" in out
    assert "decoded copy from" in err  # the folder was not decoded a second time
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved["test"]["bits_per_dim"] == pytest.approx(saved["test"]["loss"] / (np.log(2) * 324))
    assert saved["likelihood"]["iwae"]["nll"] <= saved["likelihood"]["elbo"]["neg_elbo"] + 1e-6

    code, out, err = run(["sample", run_dir, "-n", 16, "-o", tmp_path / "s.png"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "s.png") as grid:
        assert grid.size == (3 * (8 * 20 + 2), 3 * (2 * 20 + 2))  # 8 x 2 tiles of 18 px, 2 px apart, 3x scale

    loaded = vaelab.load_run(run_dir)
    assert loaded.image_shape == (18, 18)
    x, y = loaded.images("test")
    assert x.shape == (200, 18, 18) and set(y.tolist()) <= {0, 1}
    codes = loaded.encode(x)
    assert codes.shape == (200, 2) and loaded.decode(codes[:5]).shape == (5, 18, 18)
    assert loaded.sample(3, seed=1).shape == (3, 18, 18)
    assert loaded.reconstruct(np.asarray(images[:4])).shape == (4, 18, 18)  # uint8 numpy straight from PNGs
    assert loaded.interpolate(x[0], x[1], steps=5).shape == (5, 18, 18)
    same, _ = vaelab.load_dataset(f"folder:{root}", "test")  # the same split as the run's (seed 0)
    assert torch.equal(same, x)


def test_a_colour_npz_trains_with_the_continuous_bernoulli_and_reports_bits_per_dim(tmp_path, capsys):
    images, labels = shapes(600, 32, seed=1, colour=True)
    assert images.shape == (600, 32, 32, 3)
    np.savez(tmp_path / "colour.npz", x=images, y=labels)
    run_dir = tmp_path / "cb"
    code, out, err = run(["train", "--dataset", f"npz:{tmp_path / 'colour.npz'}", "--arch", "conv",
                          "--likelihood", "continuous-bernoulli", "--hidden", "64", "--latent-dim", 4,
                          "--epochs", 2, "--batch-size", 50, "--objective", "elbo", "--out", run_dir], capsys)
    assert code == 0, err
    per_dim = [float(v) for v in re.findall(r"([-\d.]+) bits/dim \(continuous-bernoulli\)", err)]
    assert len(per_dim) == 2 and per_dim[1] < per_dim[0]
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["image_shape"] == [3, 32, 32] and config["binarize"] == "none"
    code, out, err = run(["evaluate", run_dir, "--nll", "iwae", "--k", 20], capsys)
    assert code == 0, err
    assert "continuous Bernoulli" in out and "bits/dim" in out
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved["pixel_likelihood"]["name"] == "continuous-bernoulli"
    assert saved["likelihood"]["iwae"]["bits_per_dim"] == pytest.approx(
        saved["likelihood"]["iwae"]["nll"] / (np.log(2) * 3 * 32 * 32))
    with capsys.disabled():
        print(f"\ncolour npz, continuous Bernoulli: valid {per_dim} bits/dim, test IWAE_20 "
              f"{saved['likelihood']['iwae']['bits_per_dim']:.4f} bits/dim")
    loaded = vaelab.load_run(run_dir)
    assert loaded.sample(2).shape == (2, 3, 32, 32)
    assert loaded.reconstruct(images[:2]).shape == (2, 3, 32, 32)  # channels-last numpy accepted
    code, out, err = run(["sample", run_dir, "-n", 4, "-o", tmp_path / "c.png"], capsys)
    assert code == 0, err


def test_a_gaussian_run_trains_resumes_exactly_and_evaluates(tmp_path):
    images, _ = shapes(300, 12, seed=2)
    np.save(tmp_path / "grey.npy", images.astype(np.float32) / 255)
    config = vaelab.RunConfig(dataset=f"npz:{tmp_path / 'grey.npy'}", likelihood="gaussian", arch="conv",
                              hidden=(32,), epochs=2, batch_size=50, objective="elbo")
    straight = vaelab.train(config, tmp_path / "a", progress=False, log=lambda _: None)
    vaelab.train(vaelab.RunConfig(**{**config.to_dict(), "epochs": 1}), tmp_path / "b", progress=False,
                 log=lambda _: None)
    resumed = vaelab.resume(tmp_path / "b", epochs=2, progress=False, log=lambda _: None)
    assert resumed.history == straight.history  # bit for bit
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    scores = vaelab.load_run(tmp_path / "a").evaluate(nll="iwae", k=10, bar=False, log=lambda _: None)
    assert scores["pixel_likelihood"]["name"] == "gaussian" and np.isfinite(scores["likelihood"]["iwae"]["nll"])


@pytest.mark.parametrize("make, code, message", [
    (lambda p: p.mkdir(), 1, "no image files in it"),
    (lambda p: (p.mkdir(), (p / "a.png").write_text("not a png")), 1, "a.png: not an image Pillow can read"),
    (lambda p: None, 1, "no such folder"),
])
def test_bad_folders_are_one_line_and_write_nothing(tmp_path, capsys, make, code, message):
    make(tmp_path / "src")
    got, out, err = run(["train", "--dataset", f"folder:{tmp_path / 'src'}", "--out", tmp_path / "run"], capsys)
    assert got == code and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_source_options_are_checked_and_fixed_on_resume(tmp_path, capsys):
    for argv, message in [
        (["--dataset", "folder:x", "--image-size", "12"], "--image-size takes HxW"),
        (["--dataset", "folder:x", "--channels", "2"], "channels must be 1 (grey) or 3"),
        (["--dataset", "npz:x.npz", "--likelihood", "poisson"], "unknown likelihood 'poisson'"),
        (["--arch", "transformer"], "unknown architecture 'transformer'"),
        (["--channels", "3"], "channels: options of folder:PATH and npz:PATH sources, not of mnist"),
        (["--likelihood", "gaussian", "--binarize", "dynamic"], "binarized pixels are binary"),
    ]:
        code, out, err = run(["train", *argv, "--out", tmp_path / "r"], capsys)
        assert code == 2 and message in err, (argv, err)
    code, out, err = run(["train", "--resume", tmp_path / "r", "--arch", "conv"], capsys)
    assert code == 2 and "drop --arch" in err
