"""The README's Python section runs as written, block after block, against a small run made here."""

import re
from pathlib import Path

import matplotlib
import pytest

import vaelab
from vaelab import data as vdata
from vaelab.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_the_python_example():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    joined = "\n".join(blocks)
    for call in ("load_run(", "load_mnist(", ".encode(", ".decode(", ".interpolate(", ".sample(", ".latent_grid(",
                 "vaelab.train(", "scatter("):
        assert call in joined, call


def test_the_readme_python_blocks_run(tmp_path, monkeypatch):
    from conftest import trust_files, write_fake_dataset

    root = tmp_path / "data"
    # enough training images for MNIST's default validation split of 10000, as the README's calls use it
    trust_files(monkeypatch, "mnist", write_fake_dataset(root, vdata.SPECS["mnist"], n_train=10200))
    monkeypatch.setenv(vdata.ENV_DATA, str(root))
    monkeypatch.setenv(vdata.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    main(["train", "--model", "vae", "--latent-dim", "2", "--epochs", "1", "--hidden", "32,16",
          "--out", "runs/vae-z2"])
    matplotlib.use("Agg")  # no display here
    namespace: dict = {}
    for block in python_blocks(README.read_text()):
        exec(compile(block, str(README), "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    assert (tmp_path / "latent.png").stat().st_size > 1000
    assert namespace["path"].shape == (9, 28, 28) and namespace["samples"].shape == (16, 28, 28)
    assert namespace["result"].epochs_done == 3 and (tmp_path / "runs" / "my-vae" / "evaluation.json").exists()
    assert namespace["scores"]["likelihood"]["exact"]["nll"] == pytest.approx(
        vaelab.load_run("runs/my-vae").evaluate(nll="exact", log=lambda _: None)["likelihood"]["exact"]["nll"])
