"""twice: a duplicate-aware image search engine (application shell: options, CLI)."""

__version__ = "0.1.0"
