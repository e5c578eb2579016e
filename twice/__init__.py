"""twice: a duplicate-aware image search engine."""

from twice.version import __version__

__all__ = ["__version__"]
