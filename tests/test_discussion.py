"""The generated discussion states what the numbers show, and no more."""

from __future__ import annotations

import re

from records import cell, rows_for
from vaelab.discussion import discussion


def test_discussion_names_the_best_reconstruction_only_when_resolved():
    clear = rows_for({("pca", 2): [50, 50.2], ("autoencoder", 2): [30, 30.4], ("vae", 2): [35, 35.5]})
    text = " ".join(discussion(clear, epochs=5))
    assert "Autoencoder reconstructs best, ahead of VAE (paper)" in text
    assert re.search(r"autoencoder 30\.20 ± 0\.28, VAE \(paper\) 35\.25 ± 0\.35, PCA 50\.10 ± 0\.14", text)

    overlapping = rows_for({("autoencoder", 2): [30, 34], ("vae", 2): [31, 33]})
    text = " ".join(discussion(overlapping, epochs=5))
    assert "reconstructs best" not in text
    assert "about equally well" in text

    single = rows_for({("autoencoder", 2): [30], ("vae", 2): [31]})
    assert "single-seed run" in " ".join(discussion(single, epochs=5))


def test_discussion_reports_the_noise_cost_with_its_sign():
    rows = rows_for({("autoencoder", 2): [40, 40], ("vae", 2): [30, 30]})
    text = " ".join(discussion(rows, epochs=5))
    assert "VAE (paper) has 25.0% lower squared error than the autoencoder (30.00 vs 40.00)" in text


def test_discussion_latent_dims_and_training_budget():
    rows = rows_for({("autoencoder", 1): [50, 50], ("autoencoder", 2): [40, 40],
                     ("vae", 1): [45, 45], ("vae", 2): [47, 47]}, epochs=4)
    text = " ".join(discussion(rows, epochs=4))
    assert "test squared error: lower for autoencoder 50.00 → 40.00; higher for VAE (paper) 45.00 → 47.00" in text
    assert "In 4 of 4 rows" in text  # every run's best epoch is its last
    assert "still improving" not in " ".join(discussion(rows, epochs=10))  # best epoch 4 of 10: converged


def test_paper_number_sentence():
    rows = rows_for({("vae", 1): [40, 40], ("vae", 2): [30, 30]})
    text = discussion(rows, epochs=5)[0]
    best1 = cell(rows, "vae", "paper", 1, "min_valid_loss")
    assert f"{best1['mean']:.2f} ± 0.00 nats per image for latent dimension 1 (epoch 5)" in text
