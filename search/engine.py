"""The query path: image -> embedding -> FAISS top-k -> catalog rows -> verdicts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from indexer import Catalog, DecodedImage, VectorIndex, decode_image, load_vectors_for_search
from indexer.imageio import read_file_bytes

from .verdicts import DUPLICATE, Thresholds, thresholds_for

LOG = logging.getLogger(__name__)

MAX_K = 100


class SearchEngine:
    """Answers top-k queries against one catalog + index with one embedder."""

    def __init__(
        self, options, catalog: Catalog, vectors: VectorIndex, embedder, thresholds: Thresholds
    ) -> None:
        self.options = options
        self.catalog = catalog
        self.vectors = vectors
        self.embedder = embedder
        self.thresholds = thresholds

    @classmethod
    def open(cls, options, embedder) -> SearchEngine:
        """Load the saved index for ``embedder``'s model version (GPU when present)."""
        catalog = Catalog(options.catalog_url)
        vectors = load_vectors_for_search(options, embedder.version, embedder.dim)
        vectors.to_gpu()
        return cls(options, catalog, vectors, embedder, thresholds_for(catalog, embedder.version))

    def close(self) -> None:
        self.catalog.close()

    def search_file(self, path: str | Path, k: int = 10) -> dict:
        data = read_file_bytes(path, self.options.max_image_bytes)
        return self.search_bytes(data, k, source=str(path))

    def search_bytes(self, data: bytes, k: int = 10, source: str = "<upload>") -> dict:
        decoded = decode_image(
            data,
            source,
            self.options.max_image_bytes,
            self.options.max_image_pixels,
            self.embedder.draft_side,
        )
        return self.search_decoded(decoded, k, source)

    def search_decoded(self, decoded: DecodedImage, k: int = 10, source: str = "<upload>") -> dict:
        """Top-k neighbours of one decoded image, as the JSON-ready response."""
        k = check_k(k)
        started = time.perf_counter()
        query = self.embedder.embed_images([decoded.image])
        D, I = self.vectors.search(query, k + 1)
        exact = self.catalog.by_sha256(decoded.sha256)
        hits = [(int(i), float(d)) for d, i in zip(D[0], I[0], strict=True) if i >= 0]
        if exact is not None:
            hits = [(exact.id, 1.0)] + [(i, d) for i, d in hits if i != exact.id]
        hits = hits[:k]
        rows = self.catalog.get_many(i for i, _ in hits)
        results = [
            self._result(rows[i], score, exact is not None and i == exact.id)
            for i, score in hits
            if i in rows
        ]
        return {
            "query": {
                "source": source,
                "sha256": decoded.sha256,
                "width": decoded.width,
                "height": decoded.height,
                "format": decoded.format,
                "bytes": decoded.nbytes,
            },
            "results": results,
            "model": self.embedder.version,
            "thresholds": self.thresholds.to_dict(),
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    def _result(self, row, score: float, exact: bool) -> dict:
        score = float(np.clip(score, -1.0, 1.0))
        return {
            "id": row.id,
            "path": str(Path(self.options.images_dir) / row.stored_path),
            "source": row.source,
            "page_url": row.page_url,
            "score": round(score, 6),
            "verdict": DUPLICATE if exact else self.thresholds.verdict(score),
            "exact": exact,
            "width": row.width,
            "height": row.height,
            "format": row.format,
            "bytes": row.bytes,
            "parent_id": row.parent_id,
            "transform": row.transform,
        }


def check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)
