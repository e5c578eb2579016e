"""The report's CNN pair cache (table ``report_pair_cache``), one per model version.

A later report reuses the pairs among unchanged images, searches only the images added or
changed since, and drops pairs of removed ones; the cache keeps its own cut-off, so a report
at a higher threshold reuses it too.
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import delete

from twice.indexer import Catalog, VectorIndex
from twice.indexer.catalog import upsert
from twice.indexer.schema import PairCache, utcnow

from .pairs import canonical_pairs, find_pairs

LOG = logging.getLogger(__name__)


def pairs_with_cache(catalog, vectors, ids, xb, keys, cut, method, incremental, progress):
    """Reuse cached pairs among unchanged vectors; search only what is new.

    Returns (a, b, score) of the pairs at or above the cache's cut-off, and what was reused.
    """
    cached = _load_cache(catalog, vectors.model_version) if incremental else None
    usable = cached is not None and cached["threshold"] <= cut and cached["index_type"] == vectors.index_type
    search_fn, index = _searchers(vectors, method)
    if not usable:
        a, b, s = find_pairs(
            index, ids, xb, cut, method, search=search_fn, ntotal=len(vectors), progress=progress
        )
        a, b, s = _only_members(ids, a, b, s)
        _save_cache(catalog, vectors, cut, ids, keys, (a, b, s))
        reason = "requested" if not incremental else _why_full(cached, cut, vectors.index_type)
        return (
            a,
            b,
            s,
            {"full": True, "reason": reason, "searched": len(ids), "reused_pairs": 0, "removed": 0},
        )
    cut = cached["threshold"]  # keep the cache complete at its own cut-off
    unchanged = same_members(cached["ids"], cached["keys"], ids, keys)
    a, b, s = cached["pairs"]
    still = np.isin(a, ids[unchanged]) & np.isin(b, ids[unchanged])
    reused = (a[still], b[still], s[still])
    new_ids, new_xb = ids[~unchanged], xb[~unchanged]
    found = find_pairs(
        index, new_ids, new_xb, cut, method, search=search_fn, ntotal=len(vectors), progress=progress
    )
    found = _only_members(ids, *found)
    a, b, s = canonical_pairs(*(np.concatenate([r, f]) for r, f in zip(reused, found, strict=True)))
    _save_cache(catalog, vectors, cut, ids, keys, (a, b, s))
    removed = len(cached["ids"]) - int(unchanged.sum())
    return (
        a,
        b,
        s,
        {
            "full": False,
            "reason": "cached",
            "searched": len(new_ids),
            "reused_pairs": int(still.sum()),
            "removed": removed,
        },
    )


def same_members(old_ids: np.ndarray, old_keys: np.ndarray, ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which of ``ids`` (sorted) were in the sorted ``old_ids`` with the same key."""
    if len(old_ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
    return (old_ids[pos] == ids) & (old_keys[pos] == keys)


def _why_full(cached, cut, index_type) -> str:
    if cached is None:
        return "no cached pairs for this model"
    if cached["index_type"] != index_type:
        return f"index changed from {cached['index_type']} to {index_type}"
    return f"threshold {cut} is below the cached cut-off {cached['threshold']}"


def _searchers(vectors: VectorIndex, method: str):
    """(k-NN search function, CPU FAISS index for range search)."""
    if method == "knn":
        vectors.to_gpu()  # a no-op without a GPU
        return vectors.search, vectors.index
    if vectors.kind == "ivf":
        import faiss

        faiss.extract_index_ivf(vectors.index).nprobe = vectors.nprobe
    return None, vectors.index


def _only_members(ids, a, b, s):
    keep = np.isin(a, ids) & np.isin(b, ids)
    return a[keep], b[keep], s[keep]


def _load_cache(catalog: Catalog, model_version: str) -> dict | None:
    with catalog.session() as session:
        row = session.get(PairCache, model_version)
        if row is None:
            return None
        return {
            "threshold": row.threshold,
            "index_type": row.index_type,
            "ids": np.frombuffer(row.member_ids, dtype=np.int64),
            "keys": np.frombuffer(row.member_keys, dtype=np.int64),
            "pairs": (
                np.frombuffer(row.pair_a, dtype=np.int64),
                np.frombuffer(row.pair_b, dtype=np.int64),
                np.frombuffer(row.pair_score, dtype=np.float32),
            ),
        }


def _save_cache(catalog, vectors, cut, ids, keys, pairs) -> None:
    a, b, s = pairs
    values = dict(
        model_version=vectors.model_version,
        threshold=float(cut),
        index_type=vectors.index_type,
        member_ids=np.ascontiguousarray(ids, np.int64).tobytes(),
        member_keys=np.ascontiguousarray(keys, np.int64).tobytes(),
        pair_a=np.ascontiguousarray(a, np.int64).tobytes(),
        pair_b=np.ascontiguousarray(b, np.int64).tobytes(),
        pair_score=np.ascontiguousarray(s, np.float32).tobytes(),
        updated_at=utcnow(),
    )
    with catalog.session() as session:
        # Pairs of another model version go: a new model re-embeds everything. One upsert
        # for this version, so two reports saving at once never fail on its key.
        session.execute(delete(PairCache).where(PairCache.model_version != vectors.model_version))
        upsert(session, PairCache, values, ["model_version"])
