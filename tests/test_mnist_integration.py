"""One short real-MNIST run: learning must happen (fails in CI if MNIST is missing).

Measured on this code (2 CPU cores, seed 0, latent 2, paper objective, defaults otherwise: batch 512,
lr 2e-3): the validation loss after two epochs is 166.3 nats per image (after one: 180.2; untrained:
544.1; a model that only learns the mean image: 204.7). The threshold of 175 fails if learning breaks.
"""

from vaelab.checkpoint import read_metrics
from vaelab.config import RunConfig
from vaelab.evaluate import evaluate_run
from vaelab.train import train

THRESHOLD = 175.0  # nats per image after two epochs


def test_two_epoch_vae_on_real_mnist(mnist_root, tmp_path):
    config = RunConfig(model="vae", objective="paper", latent_dim=2, epochs=2, seed=0)
    result = train(config, tmp_path / "run", data_dir=mnist_root, progress=False, log=lambda _: None)
    record = read_metrics(tmp_path / "run")[-1]
    assert record["valid_loss"] < THRESHOLD, record
    evaluation = evaluate_run(tmp_path / "run", data_dir=mnist_root)
    assert evaluation["valid"]["loss"] == result.best_valid_loss  # evaluate reproduces the logged number
    assert evaluation["test"]["loss"] < THRESHOLD + 5
