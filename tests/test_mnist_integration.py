"""One short real-MNIST run: learning must happen (fails in CI if MNIST is missing).

Measured on this code (2 CPU cores, seed 0, latent 2, paper objective, defaults otherwise: batch 512,
lr 2e-3): the validation loss after two epochs is 166.3 nats per image (after one: 180.2; untrained:
544.1; a model that only learns the mean image: 204.7). The threshold of 175 fails if learning breaks.
"""

import os
import subprocess
import sys

from vaelab import data as vdata
from vaelab.config import RunConfig
from vaelab.evaluate import evaluate_run
from vaelab.runfiles import read_metrics
from vaelab.training import train

THRESHOLD = 175.0  # nats per image after two epochs


def test_two_epoch_vae_on_real_mnist(mnist_root, tmp_path):
    config = RunConfig(model="vae", objective="paper", latent_dim=2, epochs=2, seed=0)
    result = train(config, tmp_path / "run", data_dir=mnist_root, progress=False, log=lambda _: None)
    record = read_metrics(tmp_path / "run")[-1]
    assert record["valid_loss"] < THRESHOLD, record
    evaluation = evaluate_run(tmp_path / "run", data_dir=mnist_root)
    assert evaluation["valid"]["loss"] == result.best_valid_loss  # evaluate reproduces the logged number
    assert evaluation["test"]["loss"] < THRESHOLD + 5


def test_the_three_line_job_from_a_shell(mnist_root, tmp_path):
    """The issue's own check on real MNIST: a latent-2 run made by `vaelab train`, then from a shell
    load_run / load_mnist / decode(encode(x[:8]))."""
    from vaelab.cli import main

    run = tmp_path / "RUN"
    main(["train", "--latent-dim", "2", "--epochs", "1", "--hidden", "32,16", "--data-dir", str(mnist_root),
          "--out", str(run)])
    code = ("import vaelab; r = vaelab.load_run('RUN'); x, y = vaelab.load_mnist('test'); "
            "print(tuple(r.decode(r.encode(x[:8])).shape))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, vdata.ENV_DATA: str(mnist_root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(8, 28, 28)"
