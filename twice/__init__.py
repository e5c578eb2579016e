"""twice: a duplicate-aware image search engine.

The Python API (``twice.open`` and the result types) loads on first use, so importing any
part of twice (``twice.indexer`` for a catalog lookup, say) does not load the model.
"""

import lazy_loader

from twice.version import __version__

__getattr__, __dir__, _api = lazy_loader.attach(
    __name__,
    submod_attrs={
        "library": [
            "DuplicateGroup",
            "GroupMember",
            "Library",
            "Match",
            "QueryImage",
            "SearchResponse",
            "open",
        ]
    },
)
__all__ = ["__version__", *_api]
