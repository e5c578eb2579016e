"""The report's scan: saved vectors -> candidate pairs -> search's verdict on each -> groups.

Candidate pairs: a CNN score at or above the duplicate threshold (FAISS, ``search.pairs``,
cached in ``search.pair_cache``), a perceptual-hash distance (best over the 8 dihedral views) at
or below the duplicate hash threshold (``search.report_hashes``), and each image's nearest
neighbours that local-feature verification could still make duplicates (as many as search
verifies, ``options.verify_top``, scoring at least the lowest ``Thresholds.verify_floor``). Each gets the
verdict search would give it: ``Thresholds.judge`` with the CNN score, the hash distance, the
pair's structure (the lower of its two images') and, where verification can change the verdict
(every duplicate, and the uncertain band: ``verification_matters``), the inliers of the later
image fitted onto the earlier one. Images then left in no duplicate pair (loners) are searched
by their 8 views as search searches a query, those still alone by their part views too, and the
pairs found judged with the loner as the query (``search.report_loners``; with an embedder and
verification on, and no more loners than the option ``report_loners``). The duplicate pairs are
grouped by ``search.report_linkage``, which judges a member against its group's original as
search judges the member as a query (``DuplicateScan.weigh``: its views where the stored vectors
fall short).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from sqlalchemy import select
from tqdm import tqdm

from twice.hashing import HASH_BITS
from twice.indexer import Catalog, ImageRow, IndexFileError, IndexMismatchError, VectorIndex

from .explain import verification_json
from .pair_cache import pairs_with_cache
from .pairs import METHODS, canonical_pairs, check_threshold, pair_graph
from .report_hashes import NO_HASH, NO_STRUCTURE, HashScan, scan_hashes
from .report_linkage import (
    DEFAULT_LINKAGE,
    check_linkage,
    choose_original,
    link_groups,
    partners_within,
)
from .report_loners import loners, searched_pairs
from .report_verify import PairVerifier
from .report_views import ViewScorer, turned_score
from .verdicts import DUPLICATE, Judgement, Thresholds, thresholds_for
from .verify import Verification, verdict_signals, verification_weight

LOG = logging.getLogger(__name__)

# A group holding more than this share of the collection (and at least this many images) says
# the thresholds join unrelated images: the report warns.
LARGE_GROUP_SHARE = 0.5
LARGE_GROUP_MIN = 10
ALWAYS = 1 << 30  # inliers that verify any pair: what verification could make of a pair at most
NOT_RUN = -1  # inliers of a pair verification did not run on
CHUNK = 500  # ids per catalog lookup
# Loners searched by their views at most (``options.report_loners``): each costs 8 forward
# passes, ~0.25 s on 2 shared cores, so a folder of mostly unrelated images would pay
# minutes per thousand; more loners than this are not searched, and the report says so.
MAX_LONERS = 2000


@dataclass
class DuplicateScan:
    """Everything a report is made of, before formatting."""

    model_version: str
    thresholds: Thresholds  # what the report judges by (``threshold`` overrides the CNN cut)
    index_type: str
    ids: np.ndarray  # vector ids that have a catalog row, sorted
    xb: np.ndarray  # their vectors, same order
    pairs: Pairs  # the duplicate pairs (search's verdict)
    groups: list[list[int]]
    hashes: HashScan
    cache: dict = field(default_factory=dict)
    pending: int = 0  # catalog rows without a vector
    nprobe: int = 0
    seconds: float = 0.0
    verifier: PairVerifier | None = None  # None: verification is off (``verify_top`` 0)
    candidates: Pairs | None = None  # every pair judged, duplicate or not
    linkage: str = DEFAULT_LINKAGE
    views: ViewScorer | None = None  # None: pairs score by their stored vectors alone
    unsearched: int = 0  # loners left unsearched: more of them than ``report_loners``
    loner_limit: int = MAX_LONERS

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

    def structure(self, a: int, b: int) -> int | None:
        """The pair's hash structure: the lower of its two images' (None: unknown)."""
        lowest = int(self.hashes.structures(np.array([a, b])).min())
        return None if lowest == NO_STRUCTURE else lowest

    def judge(self, original: int, member: int) -> tuple[float, Judgement, dict | None, dict | None]:
        """CNN score, verdict, hash evidence and verification (``verification_json``; None when
        it did not run) of a member against its group's original (the transform turns the
        original into the member), as search would judge the member as a query."""
        score, judgement, found, checked = self.weigh(original, member)
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
        verification = None
        if checked is not None:
            fired = hashed is not None and judgement.hash not in (None, "different")
            grey = self.verifier.grey(original, member)
            verification = verification_json(checked, hashed["stored"] if fired else None, grey)
        return score, judgement, hashed, verification

    def weigh(self, original: int, member: int) -> tuple[float, Judgement, tuple | None, Verification | None]:
        """``judge``'s signals before formatting: the CNN score, the verdict, the hash match
        (``HashScan.match``'s answer) and the verification (None: it did not run).

        A pair that the stored vectors leave short of a duplicate scores as search scores the
        member as a query, by its 8 views (``ViewScorer.best``): a member that pairs with its
        siblings but whose stored vector is far from the original's (a turned copy, edited
        further) is judged against the original as search would judge it."""
        found = self.hashes.match(original, member) if self.hashes.radius >= 0 else None
        distance = None if found is None else found[0].distance
        structure = self.structure(original, member)
        stored = self.stored_score(original, member, found)
        score, judgement, checked = self.verdict(original, member, stored, distance, structure)
        if self.short_of_duplicate(score, judgement):
            queried = self.views.best(self.vector(original), member)
            if queried is not None and queried > score:
                score, judgement, checked = self.verdict(original, member, queried, distance, structure)
        return score, judgement, found, checked

    def short_of_duplicate(self, score: float, judgement: Judgement) -> bool:
        """Whether the member's views could still make the pair a duplicate: not one yet, and
        scoring under the CNN cut."""
        return self.views is not None and judgement.verdict != DUPLICATE and score < self.thresholds.duplicate

    def stored_score(self, original: int, member: int, found) -> float:
        """The pair's CNN score by the stored vectors, or by the member's views where a turn
        shows (``turned_score``), or by the original's where the original was searched as a
        loner; ``found``: the pair's hash match."""
        score = float(np.clip(self.vector(original) @ self.vector(member), -1.0, 1.0))
        transform = turn_seen(self.thresholds, found)
        score = turned_score(
            self.views, self.thresholds, self.vector(original), member, score, transform, None
        )
        if self.views is not None and original in self.views.searched:
            # An original searched as a loner found the member by its views: the pair scores so
            # whichever image ``ORIGINAL_RULE`` made the original.
            stored = self.vector(member)
            score = turned_score(self.views, self.thresholds, stored, original, score, None, None)
        return score

    def verdict(
        self, original: int, member: int, score: float, distance: int | None, structure: int | None
    ) -> tuple[float, Judgement, Verification | None]:
        """(score, verdict, verification) of the pair at ``score``, verified where that can change
        the verdict (a fit that turns scores as search scores the member, ``turned_score``)."""
        checked = None
        if self.verifier is not None and verification_matters(self.thresholds, score, distance, structure):
            # the member as a query finds its original first: search would look at it again
            checked = self.verifier.second_look(original, member)
            score = turned_score(
                self.views, self.thresholds, self.vector(original), member, score, None, checked
            )
        judgement = self.thresholds.judge(score, distance, structure=structure, **verdict_signals(checked))
        return score, judgement, checked

    def is_duplicate(self, original: int, member: int) -> bool:
        return self.weigh(original, member)[1].verdict == DUPLICATE

    def duplicates_of(self, group: list[int]) -> Callable[[int], int]:
        """An image of ``group`` -> how many of the others are duplicates of it (``is_duplicate``,
        it as the original), as ``choose_original``'s ``kept``."""
        return lambda image: sum(self.is_duplicate(image, other) for other in group if other != image)

    def keeps_frame(self, a: int, b: int) -> bool:
        """Whether the pair's verification this run fitted the whole picture onto the whole
        picture (False where verification is off or did not run on it)."""
        return self.verifier is not None and self.verifier.keeps_frame(a, b)

    def enlarged(self, larger: int, smaller: int) -> bool:
        """Whether the pair keeps the frame and ``larger`` is ``smaller`` enlarged (an upscaled
        copy, ``PairVerifier.enlarged``)."""
        return self.keeps_frame(larger, smaller) and self.verifier.enlarged(larger, smaller)


@dataclass
class Pairs:
    """Duplicate pairs, a < b, sorted: found by the CNN score, the hash distance or both."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray  # CNN cosine
    distance: np.ndarray  # best dihedral hash distance; NO_HASH where a side has no hash
    by_cnn: np.ndarray  # bool: score >= the CNN cut
    by_hash: np.ndarray  # bool: distance <= the hash cut
    structure: np.ndarray | None = None  # the lower of the two images' structure; NO_STRUCTURE unknown
    inliers: np.ndarray | None = None  # verification's inliers; NOT_RUN where it did not run
    verified: np.ndarray | None = None  # bool: verification made the duplicate
    duplicate: np.ndarray | None = None  # bool: search's verdict is duplicate
    weight: np.ndarray | None = None  # the evidence, in nats (``EvidenceWeights`` + verification)

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, keep: np.ndarray) -> Pairs:
        return Pairs(*(None if v is None else v[keep] for v in vars(self).values()))

    def keys_list(self) -> list[tuple[int, int]]:
        return list(zip(self.a.tolist(), self.b.tolist(), strict=True))

    def counts(self) -> dict:
        both = int(np.count_nonzero(self.by_cnn & self.by_hash))
        verified = 0 if self.verified is None else int(self.verified.sum())
        return {
            "cnn": int(self.by_cnn.sum()),
            "hash": int(self.by_hash.sum()),
            "both": both,
            "verify": verified,
        }


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
    linkage: str = DEFAULT_LINKAGE,
    shipped: dict | None = None,
    embedder=None,
) -> DuplicateScan:
    """Candidate pairs, search's verdict on each, and the groups of the duplicates.

    The cuts are the model version's thresholds as search has them (stored by ``twice calibrate``,
    else ``shipped``: the ones the model's checkpoint ships with, else the defaults);
    ``threshold`` overrides the CNN duplicate one. ``embedder``: builds the index's model when
    called, to score a pair that shows a turn as search scores it (``search.report_views``;
    None: stored vectors alone).
    ``workers``: processes decoding images whose hash views are not cached yet. ``linkage``:
    how duplicate pairs make groups (``search.report_linkage``).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_linkage(linkage)
    vectors = load_index(options, model_version)
    if nprobe is not None:
        if not isinstance(nprobe, int) or nprobe < 1:
            raise ValueError(f"nprobe must be an integer >= 1, got {nprobe!r}")
        vectors.nprobe = nprobe  # only an IVF index reads it
    thresholds = report_thresholds(thresholds_for(catalog, vectors.model_version, shipped), threshold)
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
    top = int(getattr(options, "verify_top", 0))
    verifier = PairVerifier(options, catalog) if top > 0 else None
    band = band_pairs(vectors, ids, xb, thresholds, top) if verifier is not None else (a[:0], b[:0])
    candidates = join_pairs(a[keep], b[keep], hashes, ids, xb, band)
    views = ViewScorer(options, catalog, embedder, vectors.model_version) if embedder is not None else None
    turn_pairs(candidates, hashes, thresholds, views, ids, xb)
    judge_pairs(candidates, hashes, thresholds, verifier, progress, views, ids, xb)
    pairs = candidates.subset(candidates.duplicate)
    scan = DuplicateScan(
        model_version=vectors.model_version,
        thresholds=thresholds,
        index_type=vectors.index_type,
        ids=ids,
        xb=xb,
        pairs=pairs,
        groups=[],
        hashes=hashes,
        cache=cache | {"hash": hashes.cache},
        pending=max(0, len(keys[0]) - len(ids)),
        nprobe=vectors.nprobe,
        verifier=verifier,
        candidates=candidates,
        linkage=linkage,
        views=views,
    )
    limit = int(getattr(options, "report_loners", MAX_LONERS))
    if views is not None and verifier is not None and limit > 0:
        search_loners(scan, vectors, top, limit, progress)
    pairs = scan.pairs
    scan.groups = link_groups(
        pairs.a,
        pairs.b,
        pairs.weight,
        linkage,
        scan.is_duplicate,
        originals(catalog, pairs, scan),
    )
    scan.seconds = time.perf_counter() - started
    return scan


def band_pairs(vectors: VectorIndex, ids: np.ndarray, xb: np.ndarray, thresholds: Thresholds, top: int):
    """(a, b): each image's ``top`` nearest neighbours that verification could make duplicates
    (score >= the floor of the most inliers, ``Thresholds.verify_floor``), as search verifies a
    query's top candidates."""
    floor = max(thresholds.verify_floor(ALWAYS), -1.0 + 1e-6)
    if not len(ids):
        return ids[:0], ids[:0]
    D, I = vectors.search(np.ascontiguousarray(xb, np.float32), min(top + 1, len(vectors)))
    query = np.repeat(ids, D.shape[1])
    D, I = D.reshape(-1), I.reshape(-1)
    keep = (floor <= D) & (I >= 0) & (query != I) & np.isin(I, ids)
    a, b, _ = canonical_pairs(query[keep], I[keep], D[keep])
    return a, b


def search_loners(
    scan: DuplicateScan, vectors: VectorIndex, top: int, limit: int = MAX_LONERS, progress: bool = False
) -> None:
    """Images in no duplicate pair searched by their 8 views as search searches a query
    (``search.report_loners``), then those still in none with their part views too (unless the
    option ``part_views`` is off, as for search); the pairs found join the scan's candidates,
    judged with the loner as the query. More than ``limit`` loners: none is searched
    (``unsearched`` counts them)."""
    floor = max(scan.thresholds.verify_floor(ALWAYS), -1.0 + 1e-6)
    alone = loners(scan.ids, scan.pairs.a, scan.pairs.b)
    if len(alone) > limit:
        scan.unsearched, scan.loner_limit = len(alone), limit
        LOG.warning(
            "%d images in no duplicate pair, more than %d: not searched by their views", len(alone), limit
        )
        return
    # Search searches a query again as a crop when its views find no duplicate (``part_views``).
    for parts in (False, True) if getattr(scan.views.options, "part_views", True) else (False,):
        found = searched_pairs(vectors, scan.views, alone, top, floor, parts, progress)
        if found:
            # A pair judged by the 8 views is judged again by all of them: the same verification
            # (cached), a score that may only rise.
            scan.candidates = merge_pairs(scan.candidates, judged_pairs(scan, found))
            scan.pairs = scan.candidates.subset(scan.candidates.duplicate)
        alone = loners(np.array(alone, np.int64), scan.pairs.a, scan.pairs.b)


def judged_pairs(scan: DuplicateScan, found: list[tuple[int, int, float]]) -> Pairs:
    """Each (query, stored image, _) of ``found`` with both in the scan, once per pair, judged as
    search judges the query (``DuplicateScan.weigh``), as sorted ``Pairs``."""
    known = set(scan.ids.tolist())
    asked = {}
    for query, stored, _ in found:
        if stored in known:
            asked.setdefault((min(query, stored), max(query, stored)), (stored, query))
    rows = []
    for (a, b), (stored, query) in sorted(asked.items()):
        score, judgement, match, checked = scan.weigh(stored, query)
        distance = NO_HASH if match is None else match[0].distance
        inliers = None if checked is None else checked.evidence
        weight = scan.thresholds.weights.weight(score, None if match is None else distance)
        rows.append((a, b, score, distance, inliers, judgement, weight + verification_weight(checked)))
    a, b, score, distance, inliers, judgement, weight = (list(column) for column in zip(*rows, strict=True))
    a, b, distance = (np.array(v, np.int64) for v in (a, b, distance))
    score = np.array(score, np.float32)
    structure = np.minimum(scan.hashes.structures(a), scan.hashes.structures(b))
    return Pairs(
        a,
        b,
        score,
        distance,
        by_cnn=score >= scan.thresholds.duplicate,
        by_hash=distance <= scan.thresholds.hash_duplicate,
        structure=structure,
        inliers=np.array([NOT_RUN if n is None else n for n in inliers], np.int64),
        verified=np.array([j.verified for j in judgement], bool),
        duplicate=np.array([j.verdict == DUPLICATE for j in judgement], bool),
        weight=np.array(weight, np.float64),
    )


def merge_pairs(old: Pairs, new: Pairs) -> Pairs:
    """``old`` and ``new`` as one sorted set of pairs; a pair in both is ``new``'s."""
    replaced = set(new.keys_list())
    kept = old.subset(np.array([key not in replaced for key in old.keys_list()], bool))
    columns = zip(vars(kept).values(), vars(new).values(), strict=True)
    joined = Pairs(*(np.concatenate([x, y]) for x, y in columns))
    return joined.subset(np.lexsort((joined.b, joined.a)))


def turn_seen(thresholds: Thresholds, found) -> str | None:
    """The dihedral transform of a hash match that fired (``HashScan.match``'s answer), else None."""
    if found is None or found[0].distance > thresholds.hash_similar:
        return None
    return found[0].transform


def turn_pairs(pairs: Pairs, hashes: HashScan, thresholds: Thresholds, views, ids, xb) -> None:
    """Pairs whose hashes matched under a turn or flip score as search scores the later image
    (``turned_score``)."""
    if views is None:
        return
    for i in np.flatnonzero(
        (pairs.distance <= thresholds.hash_similar) & (pairs.score < thresholds.duplicate)
    ):
        a, b = int(pairs.a[i]), int(pairs.b[i])
        transform = turn_seen(thresholds, hashes.match(a, b))
        stored = xb[np.searchsorted(ids, a)]
        pairs.score[i] = turned_score(views, thresholds, stored, b, float(pairs.score[i]), transform, None)


def judge_pairs(
    pairs: Pairs,
    hashes: HashScan,
    thresholds: Thresholds,
    verifier: PairVerifier | None,
    progress: bool,
    views: ViewScorer | None = None,
    ids: np.ndarray | None = None,
    xb: np.ndarray | None = None,
) -> None:
    """Search's verdict on every pair, verifying (the later image onto the earlier) where that
    can change it; fills ``structure``, ``inliers``, ``verified``, ``duplicate`` and ``weight``.
    A pair whose fitted edit turns or mirrors scores as search scores the later image
    (``turned_score``; ``views`` with the ``ids`` and vectors ``xb``)."""
    n = len(pairs)
    pairs.structure = np.minimum(hashes.structures(pairs.a), hashes.structures(pairs.b))
    pairs.inliers = np.full(n, NOT_RUN, np.int64)
    pairs.verified = np.zeros(n, bool)
    pairs.duplicate = np.zeros(n, bool)
    pairs.weight = np.zeros(n, np.float64)
    wanted = [
        i
        for i in range(n)
        if verifier is not None and verification_matters(thresholds, *pair_signals(pairs, i))
    ]
    if wanted:
        verifier.prefetch(np.r_[pairs.a[wanted], pairs.b[wanted]].tolist())
    checked = dict.fromkeys(range(n))
    for i in tqdm(wanted, desc="verifying pairs", unit="pair", disable=not progress):
        # the first look, and the second where it did not verify, as search looks again at its
        # first candidate (``PairVerifier.second_look``)
        checked[i] = verifier.second_look(int(pairs.a[i]), int(pairs.b[i]))
    for i, verification in checked.items():
        if views is not None and verification is not None:
            stored = xb[np.searchsorted(ids, pairs.a[i])]
            score = float(pairs.score[i])
            pairs.score[i] = turned_score(
                views, thresholds, stored, int(pairs.b[i]), score, None, verification
            )
        score, distance, structure = pair_signals(pairs, i)
        signals = verdict_signals(verification)
        judgement = thresholds.judge(score, distance, structure=structure, **signals)
        pairs.inliers[i] = NOT_RUN if signals["inliers"] is None else signals["inliers"]
        pairs.verified[i] = judgement.verified
        pairs.duplicate[i] = judgement.verdict == DUPLICATE
        pairs.weight[i] = thresholds.weights.weight(score, distance) + verification_weight(verification)


def pair_signals(pairs: Pairs, i: int) -> tuple[float, int | None, int | None]:
    """(CNN score, hash distance or None, structure or None) of pair i."""
    distance, structure = int(pairs.distance[i]), int(pairs.structure[i])
    return (
        float(pairs.score[i]),
        None if distance >= NO_HASH else distance,
        None if structure == NO_STRUCTURE else structure,
    )


def verification_matters(
    thresholds: Thresholds, score: float, distance: int | None, structure: int | None
) -> bool:
    """Whether verification can change a pair's verdict: it could verify a pair scoring close
    enough (the uncertain band), or demote a duplicate: too little shared geometry, or the same
    drawing in other colours (``Verification.recoloured``), which search checks on every result
    it verifies, a hash match of 0 bits included (a red and a green button hash alike)."""
    unknown = thresholds.judge(score, distance, structure=structure).verdict
    return unknown == DUPLICATE or (
        thresholds.judge(score, distance, structure=structure, inliers=ALWAYS).verdict != unknown
    )


def originals(catalog: Catalog, pairs: Pairs, scan: DuplicateScan | None = None):
    """A component -> its original (``ORIGINAL_RULE``), from the pairs, their catalog rows and
    the ``scan``'s verification (which pairs keep the frame, which image is an enlargement; None:
    none known)."""
    ids = sorted(set(pairs.a.tolist()) | set(pairs.b.tolist()))
    rows = {}
    for start in range(0, len(ids), CHUNK):
        rows.update(catalog.get_many(ids[start : start + CHUNK]))
    graph = pair_graph(pairs.a, pairs.b)

    def original_of(component: list[int]) -> int:
        known = [rows[i] for i in component if i in rows]
        if not known:  # rows deleted meanwhile
            return min(component)
        partners = partners_within(component, graph)
        if scan is None:
            return choose_original(known, partners, {}).id
        framed = partners_within(component, graph, scan.keeps_frame)
        return choose_original(known, partners, framed, scan.enlarged, scan.duplicates_of(component)).id

    return original_of


def report_thresholds(stored: Thresholds, threshold: float | None = None) -> Thresholds:
    """The stored thresholds, with ``threshold`` (when given) as the CNN duplicate cut."""
    if threshold is None:
        return replace(stored, duplicate=check_threshold(stored.duplicate))
    cut = check_threshold(threshold)
    return replace(stored, duplicate=cut, similar=min(stored.similar, cut), source="manual")


def join_pairs(a, b, hashes: HashScan, ids: np.ndarray, xb: np.ndarray, band=None) -> Pairs:
    """The CNN pairs (a, b), the hash pairs and the ``band`` pairs (a, b) as one sorted set, each
    with both signals."""
    ha, hb, _ = hashes.pairs
    va, vb = band if band is not None else (ha[:0], hb[:0])
    stacked = np.stack([np.r_[a, ha, va], np.r_[b, hb, vb]], axis=1).astype(np.int64).reshape(-1, 2)
    unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    by_cnn, by_hash = np.zeros(len(unique), bool), np.zeros(len(unique), bool)
    by_cnn[inverse[: len(a)]] = True
    by_hash[inverse[len(a) : len(a) + len(ha)]] = True
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
    if scan.unsearched:
        warnings.append(
            f"{scan.unsearched} images are in no duplicate pair, more than {scan.loner_limit}: they were"
            " not searched by their turned views, so a turned copy with further edits may be left out;"
            f" set TWICE_REPORT_LONERS to {scan.unsearched} or more to search them (8 views each)"
        )
    largest = len(scan.groups[0]) if scan.groups else 0
    if largest >= LARGE_GROUP_MIN and largest > LARGE_GROUP_SHARE * len(scan.ids):
        warnings.append(
            f"one group holds {largest} of {len(scan.ids)} images: the CNN cut {scan.threshold:g}"
            " joins unrelated images for this model; run `twice calibrate` or pass a higher --threshold"
        )
    return warnings
