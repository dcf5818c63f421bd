"""vaelab's version: a leaf module, imported by the checkpoint code without importing the package API."""

__version__ = "0.1.0"
