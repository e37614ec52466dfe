"""Models: shapes for any latent size, and PCA = the optimal rank-k reconstruction (Eckart-Young)."""

import pytest
import torch

from vaelab.config import RunConfig
from vaelab.models import PCA, VAE, Autoencoder, build_model, decode_to_pixels, encode_mean


def test_pca_reconstruction_equals_rank_k_svd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = x.float()
    k = 3
    pca = PCA(n_pixels=12, latent_dim=k).fit(x)
    mean = x.double().mean(0)
    u, s, vt = torch.linalg.svd(x.double() - mean, full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vt[:k] + mean
    torch.testing.assert_close(pca.reconstruct(x).double(), best, atol=1e-4, rtol=1e-4)
    # Encoder W and decoder Wᵀ: orthonormal directions.
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(k), atol=1e-5, rtol=0)
    torch.testing.assert_close(pca.variances.double(), s[:k] ** 2 / (len(x) - 1), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
@pytest.mark.parametrize("kind", ["autoencoder", "vae", "pca"])
def test_shapes_for_any_latent_dim(kind, latent_dim):
    model = build_model(RunConfig(model=kind, objective={"pca": "squared-error", "autoencoder": "reconstruction",
                                                        "vae": "elbo"}[kind],
                                  latent_dim=latent_dim, hidden=(32, 16)))
    x = torch.rand(7, 784)
    z = encode_mean(model, x)
    assert z.shape == (7, latent_dim)
    assert model.decode(z).shape == (7, 784)
    pixels = decode_to_pixels(model, z)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert model.reconstruct(x).shape == (7, 784)


def test_hidden_sizes_are_configurable():
    vae = VAE(n_pixels=784, latent_dim=2, hidden=(64, 32, 16))
    widths = [m.out_features for m in vae.to_hidden.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 32, 16]
    m, sigma = vae.encode(torch.rand(3, 784))
    assert m.shape == sigma.shape == (3, 2)
    ae = Autoencoder(n_pixels=784, latent_dim=1, hidden=(10,))
    assert ae.encode(torch.rand(2, 784)).shape == (2, 1)
