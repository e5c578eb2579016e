"""The catalog, the image store, the FAISS vector index and the reindex command."""

import lazy_loader

# Names load on first use, so importing the package (for one small part) stays light.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "catalog": ["Catalog"],
        "schema": ["ImageRow"],
        "reindex": ["ReindexSummary", "reindex"],
        "store": ["Added", "Indexer", "load_vectors_for_search"],
        "vectors": ["IndexFileError", "IndexMismatchError", "VectorIndex"],
    },
)
