"""The catalog, the image store, the FAISS vector index and the reindex command."""

from twice.files import ImageStore, atomic_write
from twice.imageio import DecodedImage, ImageError, decode_image, load_image

from .catalog import Catalog, ImageRow
from .reindex import ReindexSummary, reindex
from .store import Added, Indexer, load_vectors_for_search
from .vectors import IndexFileError, IndexMismatchError, VectorIndex

__all__ = [
    "Added",
    "Catalog",
    "DecodedImage",
    "ImageError",
    "ImageRow",
    "ImageStore",
    "IndexFileError",
    "IndexMismatchError",
    "Indexer",
    "ReindexSummary",
    "VectorIndex",
    "atomic_write",
    "decode_image",
    "load_image",
    "load_vectors_for_search",
    "reindex",
]
