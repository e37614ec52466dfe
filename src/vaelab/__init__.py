"""vaelab: the VAE paper as software — PCA, autoencoder and VAE on MNIST, trained and measured.

The public names below are imported on first use, so `import vaelab` stays light (no torch until a
name is touched) and the command line starts fast. `help(vaelab.load_run)` shows each one's docstring.
"""

from __future__ import annotations

import importlib

from .version import __version__

# public name -> the module that owns it
_PUBLIC = {
    "RunConfig": "config",
    "train": "training",
    "resume": "training",
    "TrainResult": "training",
    "load_run": "api",
    "Run": "api",
    "load_mnist": "api",
    "load_dataset": "api",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
