"""The report's scan: saved vectors -> duplicate pairs (CNN score or hash distance) -> groups.

A pair is a duplicate when its CNN score is at or above the duplicate threshold (FAISS,
``search.pairs``, cached in ``search.pair_cache``) OR its perceptual-hash distance, best over the
8 dihedral views, is at or below the duplicate hash threshold (``search.report_hashes``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from sqlalchemy import select

from twice.hashing import HASH_BITS
from twice.indexer import Catalog, ImageRow, IndexFileError, IndexMismatchError, VectorIndex

from .pair_cache import pairs_with_cache
from .pairs import METHODS, check_threshold, group_pairs, pair_graph
from .report_hashes import HashScan, scan_hashes
from .verdicts import Judgement, Thresholds, thresholds_for

LOG = logging.getLogger(__name__)

# A group holding more than this share of the collection (and at least this many images) says
# the thresholds join unrelated images: the report warns.
LARGE_GROUP_SHARE = 0.5
LARGE_GROUP_MIN = 10


@dataclass
class DuplicateScan:
    """Everything a report is made of, before formatting."""

    model_version: str
    thresholds: Thresholds  # what the report judges by (``threshold`` overrides the CNN cut)
    index_type: str
    ids: np.ndarray  # vector ids that have a catalog row, sorted
    xb: np.ndarray  # their vectors, same order
    pairs: Pairs
    groups: list[list[int]]
    hashes: HashScan
    cache: dict = field(default_factory=dict)
    pending: int = 0  # catalog rows without a vector
    nprobe: int = 0
    seconds: float = 0.0

    @property
    def threshold(self) -> float:
        """The CNN duplicate cut."""
        return self.thresholds.duplicate

    @property
    def hash_threshold(self) -> int:
        """The hash duplicate cut in bits (-1: the hash never fires)."""
        return self.thresholds.hash_duplicate

    def vector(self, image_id: int) -> np.ndarray:
        return self.xb[int(np.searchsorted(self.ids, image_id))]

    @cached_property
    def graph(self) -> dict[int, list[int]]:
        """Each image's duplicate partners."""
        return pair_graph(self.pairs.a, self.pairs.b)

    def judge(self, original: int, member: int) -> tuple[float, Judgement, dict | None]:
        """CNN score, verdict and hash evidence of a member against its group's original (the
        transform turns the original into the member)."""
        score = float(np.clip(self.vector(original) @ self.vector(member), -1.0, 1.0))
        found = self.hashes.match(original, member) if self.hashes.radius >= 0 else None
        judgement = self.thresholds.judge(score, None if found is None else found[0].distance)
        hashed = None
        if found is not None:
            match, side = found
            hashed = {
                "distance": match.distance,
                "bits": HASH_BITS,
                "transform": match.transform,
                # The photometric view that matched (None: the plain hashes did), and whose:
                # search's is always the result's, a pair's may be either side's.
                "stored": match.stored,
                "stored_of": None if side is None else ("original" if side == original else "member"),
            }
        return score, judgement, hashed


@dataclass
class Pairs:
    """Duplicate pairs, a < b, sorted: found by the CNN score, the hash distance or both."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray  # CNN cosine
    distance: np.ndarray  # best dihedral hash distance; NO_HASH where a side has no hash
    by_cnn: np.ndarray  # bool: score >= the CNN cut
    by_hash: np.ndarray  # bool: distance <= the hash cut

    def __len__(self) -> int:
        return len(self.a)

    def keys_list(self) -> list[tuple[int, int]]:
        return list(zip(self.a.tolist(), self.b.tolist(), strict=True))

    def counts(self) -> dict:
        both = int(np.count_nonzero(self.by_cnn & self.by_hash))
        return {"cnn": int(self.by_cnn.sum()), "hash": int(self.by_hash.sum()), "both": both}


def scan_duplicates(
    options,
    catalog: Catalog,
    model_version: str | None = None,
    threshold: float | None = None,
    method: str = "knn",
    incremental: bool = True,
    progress: bool = False,
    nprobe: int | None = None,
    workers: int = 0,
) -> DuplicateScan:
    """Duplicate pairs (CNN score >= the cut, or hash distance <= the hash cut) and groups.

    The cuts are the model version's duplicate thresholds; ``threshold`` overrides the CNN one.
    ``workers``: processes decoding images whose hash views are not cached yet.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    vectors = load_index(options, model_version)
    if nprobe is not None:
        if not isinstance(nprobe, int) or nprobe < 1:
            raise ValueError(f"nprobe must be an integer >= 1, got {nprobe!r}")
        vectors.nprobe = nprobe  # only an IVF index reads it
    thresholds = report_thresholds(thresholds_for(catalog, vectors.model_version), threshold)
    cut = thresholds.duplicate
    ids, xb = vectors.vectors()
    keys = catalog_keys(catalog)
    known = np.isin(ids, keys[0])
    if not known.all():  # (a copy of xb: at 1M vectors, 1 GB that an all-known index need not pay)
        LOG.warning("%d vectors have no catalog row (run `twice reindex` to drop them)", (~known).sum())
        ids, xb = ids[known], xb[known]
    member_keys = keys[1][np.searchsorted(keys[0], ids)]
    a, b, s, cache = pairs_with_cache(
        catalog, vectors, ids, xb, member_keys, cut, method, incremental, progress
    )
    keep = s >= cut
    hashes = scan_hashes(
        catalog, options, ids, member_keys, thresholds.hash_duplicate, incremental, workers, progress
    )
    pairs = join_pairs(a[keep], b[keep], hashes, ids, xb)
    return DuplicateScan(
        model_version=vectors.model_version,
        thresholds=thresholds,
        index_type=vectors.index_type,
        ids=ids,
        xb=xb,
        pairs=pairs,
        groups=group_pairs(pairs.a, pairs.b),
        hashes=hashes,
        cache=cache | {"hash": hashes.cache},
        pending=max(0, len(keys[0]) - len(ids)),
        nprobe=vectors.nprobe,
        seconds=time.perf_counter() - started,
    )


def report_thresholds(stored: Thresholds, threshold: float | None = None) -> Thresholds:
    """The stored thresholds, with ``threshold`` (when given) as the CNN duplicate cut."""
    if threshold is None:
        return replace(stored, duplicate=check_threshold(stored.duplicate))
    cut = check_threshold(threshold)
    return replace(stored, duplicate=cut, similar=min(stored.similar, cut), source="manual")


def join_pairs(a, b, hashes: HashScan, ids: np.ndarray, xb: np.ndarray) -> Pairs:
    """The CNN pairs (a, b) and the hash pairs as one sorted set, each with both signals."""
    ha, hb, _ = hashes.pairs
    stacked = np.stack([np.r_[a, ha], np.r_[b, hb]], axis=1).astype(np.int64).reshape(-1, 2)
    unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    by_cnn, by_hash = np.zeros(len(unique), bool), np.zeros(len(unique), bool)
    by_cnn[inverse[: len(a)]] = True
    by_hash[inverse[len(a) :]] = True
    a, b = unique[:, 0], unique[:, 1]
    score = np.einsum("ij,ij->i", xb[np.searchsorted(ids, a)], xb[np.searchsorted(ids, b)])
    return Pairs(a, b, score.astype(np.float32), hashes.distances(a, b), by_cnn, by_hash)


def load_index(options, model_version: str | None = None) -> VectorIndex:
    """The saved index; its header names the model version, so no network is loaded."""
    path = Path(options.index_path)
    if not path.exists():
        raise IndexFileError(f"{path}: no index yet; run `twice reindex FOLDER` first")
    header = VectorIndex.read_header(path)
    if model_version is not None and header["model_version"] != model_version:
        raise IndexMismatchError(
            f"{path} holds vectors of model {header['model_version']}, not {model_version}:"
            " run `twice reindex` to re-embed with the current model"
        )
    return VectorIndex.load(path, header["model_version"], header["dim"])


def catalog_keys(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(ids, keys): every catalog id, sorted, and an int64 taken from its sha256.

    The key tells a cached vector from a new image that reuses a deleted row's id.
    """
    with catalog.session() as session:
        rows = session.execute(select(ImageRow.id, ImageRow.sha256).order_by(ImageRow.id)).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    keys = np.fromiter((int(r[1][:15], 16) for r in rows), dtype=np.int64, count=len(rows))
    return ids, keys


def threshold_warnings(scan: DuplicateScan) -> list[str]:
    """Plain-words warnings when the thresholds cannot be trusted to give a readable report."""
    warnings = []
    if scan.thresholds.source == "default":
        warnings.append(
            f"the thresholds are the defaults, not fitted to model {scan.model_version}:"
            " run `twice calibrate` (a CNN without trained weights scores nearly every pair above 0.9)"
        )
    largest = len(scan.groups[0]) if scan.groups else 0
    if largest >= LARGE_GROUP_MIN and largest > LARGE_GROUP_SHARE * len(scan.ids):
        warnings.append(
            f"one group holds {largest} of {len(scan.ids)} images: the CNN cut {scan.threshold:g}"
            " joins unrelated images for this model; run `twice calibrate` or pass a higher --threshold"
        )
    return warnings
