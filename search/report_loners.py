"""Loners: images that the report's candidate pairs left without a duplicate, searched as search
searches a query.

The candidate pairs come from the stored vectors (one view of each image) and the hashes. A copy
turned a quarter turn and edited further (so that no hash view matches), or a crop, scores
0.0-0.4 against its original's stored vector and is in nobody's nearest neighbours. Search finds
such a copy as a query: its 8 dihedral views meet the original's stored view, and when those find
no duplicate its part views (``search.parts``) put a crop back at the scale it had. The report
does the same for its loners only, from their stored files (``ViewScorer.query_views``): first
the 8 views, then, for those still without a duplicate, the part views too; each loner's top
candidates by its best view (as many as search verifies, scoring at least what verification can
make a duplicate) are judged as search judges them, the loner as the query.
"""

from __future__ import annotations

import numpy as np

from twice.indexer import VectorIndex

from .report_views import ViewScorer


def loners(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[int]:
    """The ``ids`` in no pair (a[i], b[i])."""
    return sorted(set(ids.tolist()) - set(a.tolist()) - set(b.tolist()))


def searched_pairs(
    vectors: VectorIndex, views: ViewScorer, images: list[int], top: int, floor: float, parts: bool = False
) -> list[tuple[int, int, float]]:
    """(loner, candidate, best score of the loner's views): each of ``images`` searched by its
    query views (with its part views when ``parts``), its ``top`` candidates scoring at least
    ``floor``. Every image searched is marked so (``ViewScorer.searched``): its pairs score by
    its views from now on."""
    found = []
    for image_id in images:
        xq = views.query_views(image_id, parts)
        if xq is None:
            continue
        views.searched.add(image_id)
        D, I = vectors.search(np.ascontiguousarray(xq, np.float32), min(top + 1, len(vectors)))
        best: dict[int, float] = {}
        for score, other in zip(D.reshape(-1).tolist(), I.reshape(-1).tolist(), strict=True):
            if other >= 0 and other != image_id and score >= floor and score > best.get(other, -np.inf):
                best[other] = score
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top]
        found += [(image_id, other, score) for other, score in ranked]
    return found
