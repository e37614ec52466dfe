"""The package version, on its own so that any module can record it without importing the package."""

__version__ = "0.3.0"
