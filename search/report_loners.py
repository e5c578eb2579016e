"""Loners: images that the report's candidate pairs left without a duplicate, searched by their
views as search searches a query.

The candidate pairs come from the stored vectors (one view of each image) and the hashes. A copy
turned a quarter turn or a half and edited further (so that no hash view matches) scores
0.0-0.3 against its original's stored vector and is in nobody's nearest neighbours; search finds
it as a query, whose 8 dihedral views meet the original's stored view. The report does the same
for its loners only (``ViewScorer.query_views``, from their stored files): each loner's top
candidates by its best view (as many as search verifies, scoring at least what verification can
make a duplicate) are judged as search judges them, the loner as the query.

Loners that their 8 views leave without a duplicate are searched again with their part views
too (``search.parts``: the query as a part of a larger picture), as search searches a query that
its views found no duplicate for: a crop to a third of the area can be in nobody's nearest
neighbours by its stored vector or its views, while its part views rank its original in their
top 5.
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
    vectors: VectorIndex,
    views: ViewScorer,
    images: list[int],
    top: int,
    floor: float,
    parts: bool = False,
    progress: bool = False,
) -> list[tuple[int, int, float]]:
    """(loner, candidate, best score of the loner's views): each of ``images`` searched by its 8
    views (and its part views with ``parts``), its ``top`` candidates scoring at least ``floor``.
    Every image searched is marked so (``ViewScorer.searched``, and ``as_crops`` with ``parts``):
    its pairs score by those views from now on."""
    found = []
    desc = "searching loners as crops" if parts else "searching loners"
    for image_id in tqdm(images, desc=desc, unit="img", disable=not progress):
        xq = views.query_views(image_id, parts)
        if xq is None:
            continue
        views.searched.add(image_id)
        if parts:
            views.as_crops.add(image_id)
        D, I = vectors.search(np.ascontiguousarray(xq, np.float32), min(top + 1, len(vectors)))
        best: dict[int, float] = {}
        for score, other in zip(D.reshape(-1).tolist(), I.reshape(-1).tolist(), strict=True):
            if other >= 0 and other != image_id and score >= floor and score > best.get(other, -np.inf):
                best[other] = score
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top]
        found += [(image_id, other, score) for other, score in ranked]
    return found
