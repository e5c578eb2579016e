"""Loners: images that the report's candidate pairs left without a duplicate, searched by their
views as search searches a query.

The candidate pairs come from the stored vectors (one view of each image) and the hashes. A copy
turned a quarter turn or a half and edited further (so that no hash view matches) scores
0.0-0.3 against its original's stored vector and is in nobody's nearest neighbours; search finds
it as a query, whose 8 dihedral views meet the original's stored view. The report does the same
for its loners only (``ViewScorer.query_views``, from their stored files): each loner's top
candidates by its best view (as many as search verifies, scoring at least what verification can
make a duplicate) are judged as search judges them, the loner as the query.

Part views (``search.parts``: the query as a crop) are not searched: on the report bench they
brought no crop's original within reach of a duplicate verdict (of the 3 crops left out, one's
original was not among its top 5, the other two ranked 3rd and 5th at 0.29-0.40 with 4-6
inliers) and would cost 9 more views per loner.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from twice.indexer import VectorIndex

from .report_views import ViewScorer


def loners(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[int]:
    """The ``ids`` in no pair (a[i], b[i])."""
    return sorted(set(ids.tolist()) - set(a.tolist()) - set(b.tolist()))


def searched_pairs(
    vectors: VectorIndex, views: ViewScorer, images: list[int], top: int, floor: float, progress: bool = False
) -> list[tuple[int, int, float]]:
    """(loner, candidate, best score of the loner's views): each of ``images`` searched by its 8
    views, its ``top`` candidates scoring at least ``floor``. Every image searched is marked so
    (``ViewScorer.searched``): its pairs score by its views from now on."""
    found = []
    for image_id in tqdm(images, desc="searching loners", unit="img", disable=not progress):
        xq = views.query_views(image_id)
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
