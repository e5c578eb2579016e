"""All pairs at or above a cosine cut-off, and the groups they join into.

Two batched strategies over a FAISS index, never a dense N x N matrix:

- ``knn``: k nearest neighbours with a cut-off; a query whose k-th neighbour still passes the
  cut-off is asked again with 4k, up to ``max_k``. Memory is bounded by batch x k, and it runs
  on GPU indexes too (FAISS GPU indexes have no range search).
- ``range``: FAISS range search (CPU), exact for a flat index; memory grows with the number
  of pairs found, so it suits collections where duplicates are rare.

Pairs are returned once each, as ``(a, b, score)`` with ``a < b`` (catalog ids).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import faiss
import numpy as np
from tqdm import tqdm

LOG = logging.getLogger(__name__)

METHODS = ("knn", "range")
DEFAULT_BATCH = 4096
START_K = 16
DEFAULT_MAX_K = 1024

# A searcher answers (xq, k) -> (D, I) with catalog ids in I and -1 for empty slots.
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def check_threshold(threshold: float) -> float:
    """A cosine cut-off in (-1, 1]; raises ``ValueError`` naming a bad one."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not -1.0 < value <= 1.0 or value != value:
        raise ValueError(f"threshold must be in (-1, 1], got {threshold!r}")
    return value


def knn_pairs(
    search: Searcher,
    ids: np.ndarray,
    xq: np.ndarray,
    threshold: float,
    ntotal: int,
    batch_size: int = DEFAULT_BATCH,
    max_k: int = DEFAULT_MAX_K,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query id, neighbour id, score) with score >= threshold, by k-NN with a cut-off."""
    threshold = check_threshold(threshold)
    if max_k < 2:
        raise ValueError(f"max_k must be at least 2, got {max_k}")
    ids = np.asarray(ids, dtype=np.int64)
    parts, capped = [], 0
    bar = tqdm(total=len(ids), desc="finding pairs", unit="vec", disable=not progress)
    for start in range(0, len(ids), batch_size):
        qid, q = ids[start : start + batch_size], xq[start : start + batch_size]
        k = min(START_K + 1, ntotal, max_k)  # +1: the query finds itself
        todo = np.arange(len(qid))
        while len(todo):
            D, I = search(np.ascontiguousarray(q[todo]), k)
            full = D[:, -1] >= threshold
            done = ~full | (k >= ntotal) | (k >= max_k)
            capped += int(np.count_nonzero(full & (k < ntotal) & (k >= max_k)))
            parts.append(_keep(qid[todo[done]], D[done], I[done], threshold))
            todo, k = todo[~done], min(k * 4, ntotal, max_k)
        bar.update(len(qid))
    bar.close()
    if capped:
        LOG.warning(
            "%d images have more than %d neighbours above %.3f: only their %d nearest are paired"
            " (their groups are still joined through those)",
            capped,
            max_k - 1,
            threshold,
            max_k - 1,
        )
    return _concat(parts)


def range_pairs(
    index: faiss.Index,
    ids: np.ndarray,
    xq: np.ndarray,
    threshold: float,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query id, neighbour id, score) with score >= threshold, by FAISS range search."""
    threshold = check_threshold(threshold)
    ids = np.asarray(ids, dtype=np.int64)
    # FAISS keeps inner-product results strictly above the radius; step just below it so
    # that a score equal to the threshold counts, then filter exactly.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
    parts = []
    bar = tqdm(total=len(ids), desc="finding pairs", unit="vec", disable=not progress)
    for start in range(0, len(ids), batch_size):
        qid, q = ids[start : start + batch_size], xq[start : start + batch_size]
        lims, D, I = index.range_search(np.ascontiguousarray(q, dtype=np.float32), radius)
        query = np.repeat(qid, np.diff(lims).astype(np.int64))
        keep = (threshold <= D) & (I >= 0) & (query != I)
        parts.append((query[keep], I[keep].astype(np.int64), D[keep].astype(np.float32)))
        bar.update(len(qid))
    bar.close()
    return canonical_pairs(*_concat(parts))


def _keep(qid: np.ndarray, D: np.ndarray, I: np.ndarray, threshold: float):
    query = np.repeat(qid, D.shape[1])
    D, I = D.reshape(-1), I.reshape(-1)
    keep = (threshold <= D) & (I >= 0) & (query != I)
    return query[keep], I[keep].astype(np.int64), D[keep].astype(np.float32)


def _concat(parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return empty_pairs()
    a, b, s = (np.concatenate(column) for column in zip(*parts, strict=True))
    return canonical_pairs(a, b, s)


def canonical_pairs(
    a: np.ndarray, b: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unordered pair once, as a < b, sorted by (a, b); the higher score of two wins."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    score = np.asarray(score, np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    lo, hi, score = lo[keep], hi[keep], score[keep]
    # Sort by pair then by descending score, and keep the first of each pair.
    order = np.lexsort((-score, hi, lo))
    lo, hi, score = lo[order], hi[order], score[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], score[first]


def find_pairs(
    index: faiss.Index | None,
    ids: np.ndarray,
    xq: np.ndarray,
    threshold: float,
    method: str = "knn",
    search: Searcher | None = None,
    ntotal: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_k: int = DEFAULT_MAX_K,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs between the queries ``(ids, xq)`` and everything in ``index`` at >= threshold.

    ``index`` returns catalog ids (an ``IDMap`` or IVF index with ids); ``search`` overrides
    its k-NN search (a GPU copy, say). Returns canonical pairs ``(a, b, score)``, ``a < b``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(ids) != len(xq):
        raise ValueError(f"{len(ids)} ids for {len(xq)} query vectors")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ntotal = int(index.ntotal if ntotal is None else ntotal)
    if len(ids) == 0 or ntotal == 0:
        return empty_pairs()
    if method == "range":
        if index is None:
            raise ValueError("method 'range' needs a CPU FAISS index")
        return range_pairs(index, ids, xq, threshold, batch_size, progress)
    search = search or index.search
    return knn_pairs(search, ids, xq, threshold, ntotal, batch_size, max_k, progress)


class UnionFind:
    """Disjoint sets over arbitrary integer ids (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            parent[x], self.size[x] = x, 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]


def group_pairs(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components of the pair graph: sorted id lists, largest group first."""
    uf = UnionFind()
    for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True):
        uf.union(x, y)
    groups: dict[int, list[int]] = {}
    for x in uf.parent:
        groups.setdefault(uf.find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def pair_graph(a: np.ndarray, b: np.ndarray) -> dict[int, list[int]]:
    """Each image's partners in the pairs (a[i], b[i]), sorted."""
    graph: dict[int, list[int]] = {}
    for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True):
        graph.setdefault(x, []).append(y)
        graph.setdefault(y, []).append(x)
    return {x: sorted(partners) for x, partners in graph.items()}


def chains_from(start: int, graph: dict[int, list[int]]) -> dict[int, list[int]]:
    """For every image connected to ``start``: the images between them on a shortest chain of
    pairs (empty for a partner of ``start`` itself). Breadth first, partners by id."""
    between: dict[int, list[int]] = {start: []}
    frontier = [start]
    while frontier:
        reached = []
        for x in frontier:
            for y in graph.get(x, ()):
                if y not in between:
                    between[y] = [*between[x], x] if x != start else []
                    reached.append(y)
        frontier = reached
    return between


def plant_groups(
    n: int,
    dim: int,
    groups: int,
    group_size: tuple[int, int] = (2, 6),
    noise: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, list[list[int]]]:
    """Random unit vectors with planted near-duplicate groups, for benchmarks and tests.

    Returns ``(xb, planted)``: ``xb`` is ``(n, dim)`` float32, row i is id i; each planted
    group is a base vector plus copies with Gaussian noise of norm ~``noise`` (cosine about
    ``1 / (1 + noise**2)`` between members; random pairs in 256-d sit near 0).
    """
    if n < 1 or dim < 2:
        raise ValueError(f"need n >= 1 and dim >= 2, got n={n}, dim={dim}")
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((n, dim), dtype=np.float32)
    sizes = rng.integers(group_size[0], group_size[1] + 1, size=groups)
    if sizes.sum() > n:
        raise ValueError(f"{groups} groups of up to {group_size[1]} do not fit in {n} vectors")
    members = rng.permutation(n)[: sizes.sum()]
    planted = []
    for chunk in np.split(members, np.cumsum(sizes)[:-1]):
        base = xb[chunk[0]] / np.linalg.norm(xb[chunk[0]])
        jitter = rng.standard_normal((len(chunk) - 1, dim), dtype=np.float32)
        jitter *= noise / np.sqrt(dim)
        xb[chunk[1:]] = base + jitter
        xb[chunk[0]] = base
        planted.append(sorted(int(i) for i in chunk))
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return xb, sorted(planted, key=lambda g: (-len(g), g[0]))
