"""vaelab: the VAE paper as software — PCA, autoencoder and VAE on MNIST, trained and measured."""

__version__ = "0.2.0"

__all__ = ["__version__"]
