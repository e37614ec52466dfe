"""One short real-MNIST run: learning must happen (fails in CI if MNIST is missing).

Measured on this code (2 CPU cores, seed 0, latent 2, paper objective, defaults otherwise): the
validation loss after one epoch is 176.9 nats per image (untrained: ~543; a model that only learns
the mean image: 204.7). The threshold of 185 fails if learning breaks.
"""

from vaelab.checkpoint import read_metrics
from vaelab.config import RunConfig
from vaelab.evaluate import evaluate_run
from vaelab.train import train

THRESHOLD = 185.0  # nats per image after one epoch


def test_one_epoch_vae_on_real_mnist(mnist_root, tmp_path):
    config = RunConfig(model="vae", objective="paper", latent_dim=2, epochs=1, seed=0)
    result = train(config, tmp_path / "run", data_dir=mnist_root, progress=False, log=lambda _: None)
    [record] = read_metrics(tmp_path / "run")
    assert record["valid_loss"] < THRESHOLD, record
    evaluation = evaluate_run(tmp_path / "run", data_dir=mnist_root)
    assert evaluation["valid"]["loss"] == result.best_valid_loss  # evaluate reproduces the logged number
    assert evaluation["test"]["loss"] < THRESHOLD + 5
