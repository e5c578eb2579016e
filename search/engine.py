"""The query path: exact bytes, perceptual hash and CNN evidence -> one verdict per result.

Candidates come from three places: the catalog row with the same sha256, the stored hashes
(each image's plain hash and its bright and dark views, ``STORED_VIEWS``) within the hash
radius of any of the query's 8 dihedral views (``HashIndex``, no scan), and the
FAISS top-k of the query's embedding (of its 8 dihedral views with ``tta="d4"``). Every
candidate gets a CNN score, a hash distance when both sides have a hash, and a verdict from
``Thresholds.judge``; results are ranked by verdict, then by the weight of their evidence
(``EvidenceWeights``: calibrated log-likelihood ratios of the hash distance and the CNN score,
summed), then by CNN score and hash distance. With a calibrated clear-match rule the FAISS
search reaches ``CONTEXT_K`` deep, so that each result's CNN margin over the best image of
another family (an original and its variants are one family) is known.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from twice.hashing import (
    DIHEDRAL,
    HASH_VERSION,
    HashIndex,
    HashMatch,
    dihedral_hashes,
    flatten_stored,
    hash_structure,
    is_flat,
    nearest_match,
    row_hashes,
)
from twice.imageio import DecodedImage, ImageError, decode_image, read_file_bytes
from twice.indexer import Catalog, ImageRow, VectorIndex, load_vectors_for_search
from twice.indexer.catalog import load_stored_hashes

from .explain import verification_json
from .parts import PART_VIEWS, part_tensors
from .verdicts import (
    DEFAULT_HASH_SIMILAR,
    DIFFERENT,
    DUPLICATE,
    RANK,
    Judgement,
    Thresholds,
    disagrees,
    thresholds_for,
)
from .verify import (
    MAX_SIDE,
    MIN_KEYPOINTS,
    RETRY_CONTRAST,
    FeatureCache,
    FeatureExtractor,
    Features,
    Verification,
    second_look,
    verdict_signals,
    verification_weight,
    verify,
)

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)

MAX_K = 100
# How deep the FAISS search looks for the clear-match rule's rival families: past a whole family
# (an original and the 11 variants `twice augment` makes of it by default).
CONTEXT_K = 32
MIN_LOOKUP_RADIUS = DEFAULT_HASH_SIMILAR  # bits; the multi-index probes the same buckets up to 15
TTA_MODES = ("none", "d4")


def default_tta(embedder) -> str:
    """d4 for a single-view model: the query's 8 turns/flips are searched, so a turned or
    mirrored copy meets its original's stored view exactly, whatever the weights learned. A
    d4-pooled model is invariant by itself: one view is enough."""
    return "d4" if getattr(embedder.net, "invariance", "d4") == "none" else "none"


# Verification by local features (search.verify) of the top candidates: see docs/verification.md
# for the measurement behind the number and the cache (features are computed on demand).
DEFAULT_VERIFY_TOP = 5
MAX_VERIFY_TOP = 20
FEATURE_CACHE = 512  # stored images' features kept (~25-140 KB each)
VERIFY_THREADS = 2  # threads finding keypoints for one query's verification


@dataclass
class QueryFacts:
    """What one query's rankings share: found once, whichever views are searched."""

    tta: str
    exact: ImageRow | None  # the catalog row with the query's bytes
    flat: bool  # the query's hash says nothing
    structure: int  # how much a match of the query's hash says
    matches: list[HashMatch]  # stored hashes within the lookup radius
    found: dict = field(default_factory=dict)  # the query's keypoints, once verification found them


@dataclass
class Candidate:
    """One catalogued image a query may match, with every signal it has."""

    row: object  # the catalog row
    scored: tuple[float, int] | None  # (CNN score, query view index); None: no vector yet
    match: HashMatch | None
    margin: float | None
    gap: float | None  # the score's gap below the best other candidate's
    exact: bool
    grey: bool = False  # verification found the query grey and this image in colour


class SearchEngine:
    """Answers top-k queries against one catalog + index with one embedder."""

    def __init__(
        self,
        options,
        catalog: Catalog,
        vectors: VectorIndex,
        embedder,
        thresholds: Thresholds,
        tta: str | None = None,
    ) -> None:
        self.options = options
        self.catalog = catalog
        self.vectors = vectors
        self.embedder = embedder
        self.thresholds = thresholds
        self.tta = default_tta(embedder) if tta is None else check_tta(tta)
        self._hashes = HashIndex()
        self._hashes_after = 0  # the highest catalog id already in self._hashes
        self._hash_lock = threading.Lock()
        self.verify_top = check_verify_top(getattr(options, "verify_top", DEFAULT_VERIFY_TOP))
        self.part_views = bool(getattr(options, "part_views", True))
        self.features = FeatureExtractor()
        self.stored_features = FeatureCache(FEATURE_CACHE)
        self.second_features = FeatureExtractor(contrast=RETRY_CONTRAST)
        self.second_stored = FeatureCache(FEATURE_CACHE // 4)  # first candidates only
        # The query's keypoints are found beside its embedding and lookups, not after them.
        self._keypoints = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="twice-keypoints")

    @classmethod
    def open(cls, options, embedder, tta: str | None = None) -> SearchEngine:
        """Load the saved index for ``embedder``'s model version (GPU when present)."""
        catalog = Catalog(options.catalog_url)
        vectors = load_vectors_for_search(options, embedder.version, embedder.dim)
        vectors.to_gpu()
        return cls(
            options,
            catalog,
            vectors,
            embedder,
            thresholds_for(catalog, embedder.version, embedder.shipped_thresholds),
            tta,
        )

    def close(self) -> None:
        self._keypoints.shutdown(wait=False, cancel_futures=True)
        self.catalog.close()

    def search_file(self, path: str | Path, k: int = 10, tta: str | None = None) -> dict:
        data = read_file_bytes(path, self.options.max_image_bytes)
        return self.search_bytes(data, k, source=str(path), tta=tta)

    def search_bytes(
        self, data: bytes, k: int = 10, source: str = "<upload>", tta: str | None = None
    ) -> dict:
        decoded = decode_image(
            data,
            source,
            self.options.max_image_bytes,
            self.options.max_image_pixels,
            self.embedder.draft_side,
        )
        return self.search_decoded(decoded, k, source, tta)

    def search_decoded(
        self, decoded: DecodedImage, k: int = 10, source: str = "<upload>", tta: str | None = None
    ) -> dict:
        """Top-k neighbours of one decoded image, as the JSON-ready response."""
        k = check_k(k)
        tta = check_tta(self.tta if tta is None else tta)
        started = time.perf_counter()
        thresholds = self.thresholds  # one consistent set even if the service swaps it now
        found = self.find_keypoints(decoded)
        xq, views = self.embed_views(decoded.image, tta)
        query_hashes = dihedral_hashes(decoded.image)
        results = self.rank(decoded, xq, views, query_hashes, k, thresholds, found)
        return {
            "query": {
                "source": source,
                "sha256": decoded.sha256,
                "width": decoded.width,
                "height": decoded.height,
                "format": decoded.format,
                "bytes": decoded.nbytes,
                "phash": format(int(query_hashes[0]) & (2**64 - 1), "016x"),
            },
            "results": results,
            "model": self.embedder.version,
            "thresholds": thresholds.to_dict(),
            "tta": tta,
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    def rank(
        self,
        decoded: DecodedImage,
        xq: np.ndarray,
        views: tuple[str, ...],
        query_hashes: np.ndarray,
        k: int,
        thresholds: Thresholds | None = None,
        found: dict | None = None,
    ) -> list[dict]:
        """The top-k results, with evidence, of a query already embedded (``embed_views``) and hashed;
        ``found``: its keypoints, when already on their way (``find_keypoints``).

        Candidates: the FAISS top-k of every view, the hash matches within the lookup radius, the
        row with the same bytes, and the originals of any of those that are known variants; each
        gets every signal it has, a verdict and a weight. A query left with no duplicate after
        verification may be a crop: it is ranked again with its part views (``parts``) added,
        each one more query view.
        """
        thresholds = thresholds or self.thresholds
        depth = max(k + 1, CONTEXT_K) if thresholds.clear_rule else k + 1
        flat = is_flat(query_hashes[0])  # a query without structure: its hash says nothing
        query = QueryFacts(
            tta_of(views),
            self.catalog.by_sha256(decoded.sha256),
            flat,
            hash_structure(decoded.image),  # a low-structure query's hash match is weak evidence
            [] if flat else self.hash_matches(query_hashes, lookup_radius(thresholds))[: k + 1],
            {} if found is None else found,
        )
        D, I = self.vectors.search(xq, depth)
        results = self._ranked(decoded, xq, views, D, I, query_hashes, k, thresholds, query)
        if self.part_views and not (results and results[0]["verdict"] == DUPLICATE):
            parts = part_vectors(self.embedder, decoded.image)
            D_parts, I_parts = self.vectors.search(parts, depth)
            xq, views = np.concatenate([xq, parts]), views + PART_VIEWS
            D, I = np.concatenate([D, D_parts]), np.concatenate([I, I_parts])
            results = self._ranked(decoded, xq, views, D, I, query_hashes, k, thresholds, query)
        return results[:k]

    def _ranked(
        self,
        decoded: DecodedImage,
        xq: np.ndarray,
        views: tuple[str, ...],
        D: np.ndarray,
        I: np.ndarray,
        query_hashes: np.ndarray,
        k: int,
        thresholds: Thresholds,
        query: QueryFacts,
    ) -> list[dict]:
        """Every candidate's result, ranked (``rank``'s one pass over the views searched, D and I)."""
        exact, flat, structure, matches, tta = (
            query.exact,
            query.flat,
            query.structure,
            query.matches,
            query.tta,
        )
        cnn = self._cnn_best(D[:, : k + 1], I[:, : k + 1])
        ids = set(cnn) | {m.id for m in matches} | ({exact.id} if exact is not None else set())
        rows = self.catalog.get_many(ids)
        # The original of a matched variant is a candidate too (judged on its own evidence): a
        # brightened copy may sit 14 bits from its original but 12 from the original's mirror.
        parents = {row.parent_id for row in rows.values() if row.parent_id is not None} - ids
        if parents:
            rows.update(self.catalog.get_many(parents))
            ids |= parents & set(rows)
        cnn.update(self._cnn_scores(xq, ids - set(cnn)))
        by_hash = {m.id: m for m in matches}
        for image_id, row in rows.items():  # CNN candidates beyond the lookup radius: their distance
            if image_id not in by_hash and not flat and has_current_hash(row) and not is_flat(row.phash):
                by_hash[image_id] = nearest_view(query_hashes, image_id, row_hashes(row))
        others = [cnn[i][0] for i in ids & set(rows) if i in cnn and (exact is None or i != exact.id)]
        best_other = max(others, default=None)  # what each score's gap is measured from
        margins = self._margins(cnn, D, I, rows) if thresholds.clear_rule else {}
        candidates = {}
        for image_id in ids & set(rows):
            is_exact = exact is not None and image_id == exact.id
            # The same bytes embed the same; a row without a vector yet (pending) has no score.
            scored = cnn.get(image_id, (1.0, 0) if is_exact else None)
            gap = None if scored is None or best_other is None else max(best_other - scored[0], 0.0)
            candidates[image_id] = Candidate(
                rows[image_id], scored, by_hash.get(image_id), margins.get(image_id), gap, is_exact
            )
        results = [self._judged(c, thresholds, views, tta, structure) for c in candidates.values()]
        results.sort(key=_rank_key)
        # The top candidates again, with their verification: it adds its weight and explains the
        # edit. Where it demotes them, the unverified duplicates next in line rise into the top:
        # they are verified in turn (up to MAX_VERIFY_TOP in all), so no duplicate reaches the top
        # unseen (a star of one series at CNN 0.87 ranked first, above the five verified to be
        # merely similar, when k was 5 rather than 1).
        looked: set[int] = set()
        checked: dict[int, Verification] = {}
        todo = [r["id"] for r in results[: self.verify_top]]
        while todo:
            found, query_featureless = self.verify_candidates(
                decoded, [candidates[i] for i in todo], query.found, look_again=not looked
            )
            looked.update(todo)
            checked.update(found)
            results = [
                self._judged(
                    candidates[r["id"]],
                    thresholds,
                    views,
                    tta,
                    structure,
                    checked.get(r["id"]),
                    query_featureless,
                )  # fmt: skip
                if r["id"] in found or query_featureless
                else r
                for r in results
            ]
            results.sort(key=_rank_key)
            todo = unverified_duplicates(results[: self.verify_top], looked)
            todo = todo[: MAX_VERIFY_TOP - len(looked)]
        return results

    def _judged(
        self,
        candidate: Candidate,
        thresholds: Thresholds,
        views: tuple[str, ...],
        tta: str,
        structure: int | None = None,
        checked: Verification | None = None,
        query_featureless: bool = False,
    ) -> dict:
        """One candidate's result: its verdict, evidence and weight (with its verification when run)."""
        score, view = candidate.scored if candidate.scored is not None else (-1.0, 0)
        distance = _distance(candidate.match)
        judgement = thresholds.judge(
            score,
            distance,
            candidate.exact,
            candidate.margin,
            structure,
            **verdict_signals(checked, query_featureless),
        )
        weight = thresholds.weights.weight(
            None if candidate.scored is None else score, distance, candidate.gap
        )
        weight += verification_weight(checked)
        # The photometric change that a hash view saw, when the hash itself matched.
        fired = candidate.match is not None and judgement.hash not in (None, DIFFERENT)
        hash_view = candidate.match.stored if fired else None
        verification = verification_json(checked, hash_view, candidate.grey)
        evidence = self._evidence(
            judgement, candidate.scored, views[view], candidate.match, tta, weight, candidate.margin
        )
        evidence["verification"] = verification
        evidence["summary"] = summarize(evidence)
        return self._result(candidate.row, score, judgement, evidence)

    # verification ---------------------------------------------------------------------------

    def find_keypoints(self, decoded: DecodedImage) -> dict:
        """The query's keypoints (and its mirror image's), started in the background now, for
        ``verify_candidates`` to take; empty when verification is off. They take ~50 ms of one
        core, which the embedding and the lookups leave partly idle."""
        if not self.verify_top:
            return {}
        size = (decoded.width, decoded.height)
        return {"query": self._keypoints.submit(self.features.both, decoded.image, size)}

    def verify_candidates(
        self,
        decoded: DecodedImage,
        candidates: list[Candidate],
        found: dict | None = None,
        look_again: bool = True,
    ) -> tuple[dict[int, Verification], bool]:
        """Local-feature verification of the query against each candidate (the same bytes need
        none), and whether the query had too few keypoints to verify anything; a stored file that
        cannot be read is logged and left unverified. ``found`` keeps the query's keypoints
        for another call on the same query; ``look_again``: the first candidate, when it does
        not verify, is looked at again (search's first candidate only)."""
        wanted = [c for c in candidates if not c.exact]
        if not wanted:
            return {}, False
        found = {} if found is None else found
        # OpenCV releases the GIL: the query's keypoints and the stored images' (those not
        # cached) are found side by side.
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            if "query" not in found:
                found["query"] = pool.submit(
                    self.features.both, decoded.image, (decoded.width, decoded.height)
                )
            stored = list(pool.map(self._cached_features, [c.row for c in wanted]))
            query, mirror = found["query"].result()
        checked = {}
        for candidate, features in zip(wanted, stored, strict=True):
            if features is not None:
                checked[candidate.row.id] = verify(query, features, mirror)
                candidate.grey = query.grey and not features.grey
        first = checked.get(wanted[0].row.id)
        if look_again and first is not None and not first.verified:
            checked[wanted[0].row.id] = self._second_look(decoded, wanted[0].row, first, found)
        return checked, len(query) < MIN_KEYPOINTS

    def _second_look(self, decoded: DecodedImage, row, first: Verification, found: dict) -> Verification:
        """The first candidate verified again at a lower contrast threshold (``second_look``)."""
        if "second" not in found:
            found["second"] = self.second_features.both(decoded.image, (decoded.width, decoded.height))
        extract = self.second_features
        stored = self.second_stored.get(row.id, lambda: self._stored_features(row, extract))
        if stored is None:
            return first
        query, mirror = found["second"]
        return second_look(first, verify(query, stored, mirror))

    def _cached_features(self, row) -> Features | None:
        return self.stored_features.get(row.id, lambda: self._stored_features(row))

    def _stored_features(self, row, extract: FeatureExtractor | None = None) -> Features | None:
        path = Path(self.options.images_dir) / row.stored_path
        try:
            data = read_file_bytes(path, self.options.max_image_bytes)
            image = decode_image(
                data, str(path), self.options.max_image_bytes, self.options.max_image_pixels, MAX_SIDE
            )
        except (OSError, ImageError) as exc:
            LOG.warning("cannot verify against #%d (%s): %s", row.id, path, exc)
            return None
        return (extract or self.features)(image.image, (image.width, image.height))

    # evidence -----------------------------------------------------------------------------

    def embed_views(self, image, tta: str = "none") -> tuple[np.ndarray, tuple[str, ...]]:
        """The query's embedding, or its 8 dihedral views' (``tta="d4"``), and their names.

        Preprocessing squashes the whole image to a square, so a turned or flipped image's
        tensor is the turned or flipped tensor: the views need one decode and one resize.
        """
        if check_tta(tta) == "none":
            return self.embedder.embed_tensors(self.embedder.preprocess(image)[None]), DIHEDRAL[:1]
        return dihedral_vectors(self.embedder, image), DIHEDRAL

    def hash_matches(self, query_hashes: np.ndarray, radius: int) -> list[HashMatch]:
        """Catalogued images within ``radius`` bits of any view of the query, nearest first."""
        if radius < 0:
            return []
        with self._hash_lock:
            self._refresh_hashes()
            return self._hashes.search(query_hashes, radius)

    def _refresh_hashes(self) -> None:
        # Rows only ever get larger ids, so one indexed range query keeps the lookup current;
        # rows deleted since are dropped when their catalog row is not found.
        ids, stored = load_stored_hashes(self.catalog, self._hashes_after)
        if len(ids):
            self._hashes.add(*flatten_stored(ids, stored))
            self._hashes_after = int(ids.max())

    def _margins(self, cnn: dict, D: np.ndarray, I: np.ndarray, rows: dict) -> dict[int, float]:
        """Each scored candidate's CNN margin over the best image of another family, from the
        candidates and the deeper FAISS list; no image beyond that list scores above its end."""
        scores = self._cnn_best(D, I) | cnn  # with hash candidates beyond the FAISS list
        unknown = set(scores) - set(rows)
        parents = {i: row.parent_id for i, row in rows.items()} | self.catalog.parent_ids(unknown)
        family = {i: parents.get(i) or i for i in scores}
        full = I[:, -1] >= 0  # a view whose list is full may hide images scoring up to its end
        floor = float(D[full, -1].max()) if full.any() and len(self.vectors) > I.shape[1] else -1.0
        return family_margins({i: s for i, (s, _) in scores.items()}, family, floor)

    def _cnn_scores(self, xq: np.ndarray, ids: set[int]) -> dict[int, tuple[float, int]]:
        """Scores of chosen ids (hash or exact candidates outside the top-k)."""
        if not ids:
            return {}
        wanted = np.fromiter(sorted(ids), np.int64, len(ids))
        selector = faiss.IDSelectorBatch(wanted)
        index = self.vectors.index  # the CPU index: GPU indexes take no selector
        ivf = faiss.try_extract_index_ivf(index)
        params = (
            faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist)
            if ivf is not None
            else faiss.SearchParameters(sel=selector)
        )
        with self.vectors._lock:  # the same lock VectorIndex.search takes
            if len(self.vectors) == 0:
                return {}
            D, I = index.search(np.ascontiguousarray(xq, np.float32), len(wanted), params=params)
        return self._cnn_best(D, I)

    @staticmethod
    def _cnn_best(D: np.ndarray, I: np.ndarray) -> dict[int, tuple[float, int]]:
        """{id: (best score, view index)} from one (D, I) row per view."""
        best: dict[int, tuple[float, int]] = {}
        for view, (scores, ids) in enumerate(zip(D, I, strict=True)):
            for score, image_id in zip(scores.tolist(), ids.tolist(), strict=True):
                if image_id >= 0 and score > best.get(image_id, (-np.inf, 0))[0]:
                    best[image_id] = (float(score), view)
        return best

    def _evidence(
        self,
        judgement: Judgement,
        scored: tuple[float, int] | None,
        view: str,
        match: HashMatch | None,
        tta: str,
        weight: float,
        margin: float | None = None,
    ) -> dict:
        cnn = None
        if scored is not None:
            cnn = {"score": round(float(np.clip(scored[0], -1.0, 1.0)), 6), "verdict": judgement.cnn}
            if margin is not None:
                cnn["margin"] = round(float(margin), 6)
                cnn["clear"] = judgement.clear
            if tta != "none":
                cnn["view"] = view
        hashed = None
        if match is not None:
            hashed = {
                "distance": match.distance,
                "bits": 64,
                "transform": match.transform,
                "stored": match.stored,  # the result's photometric view that matched; None: its hash
                "verdict": judgement.hash,
            }
        transform = _matched_transform(judgement, match, view)
        evidence = {
            "signals": judgement.signals,
            "decided_by": judgement.decided_by,
            "exact": judgement.exact,
            "hash": hashed,
            "cnn": cnn,
            "transform": transform,
            "weight": round(weight, 3),
        }
        return evidence

    def _result(self, row, score: float, judgement: Judgement, evidence: dict) -> dict:
        score = float(np.clip(score, -1.0, 1.0))
        return {
            "id": row.id,
            "path": str(Path(self.options.images_dir) / row.stored_path),
            "source": row.source,
            "page_url": row.page_url,
            "score": round(score, 6),
            "verdict": judgement.verdict,
            "exact": judgement.exact,
            "width": row.width,
            "height": row.height,
            "format": row.format,
            "bytes": row.bytes,
            "parent_id": row.parent_id,
            "transform": row.transform,
            "evidence": evidence,
        }


def dihedral_vectors(embedder, image) -> np.ndarray:
    """(8, D): the embeddings of ``image``'s ``DIHEDRAL`` views, from one resize (preprocessing
    squashes the whole image to a square, so a turned image's tensor is the turned tensor)."""
    return embedder.embed_tensors(dihedral_tensors(embedder.preprocess(image)))


def part_vectors(embedder, image) -> np.ndarray:
    """(len(PART_VIEWS), D): the embeddings of ``image``'s part views (``search.parts``)."""
    return embedder.embed_tensors(part_tensors(image, embedder.preprocess))


def dihedral_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The (C, H, W) tensor in each ``DIHEDRAL`` view, in that order (tensor methods only, so
    importing the engine does not import torch)."""
    transposed = tensor.transpose(1, 2)
    return [
        tensor,
        tensor.rot90(-1, dims=(1, 2)),  # clockwise
        tensor.rot90(2, dims=(1, 2)),
        tensor.rot90(1, dims=(1, 2)),
        tensor.flip(dims=(2,)),
        tensor.flip(dims=(1,)),
        transposed,
        transposed.flip(dims=(1, 2)),
    ]


def nearest_view(query_hashes: np.ndarray, image_id: int, stored) -> HashMatch:
    """The query view nearest to one stored image's hashes: its plain hash, or (plain, bright,
    dark) as ``row_hashes`` gives them (ties: the plain hash, then the earlier view)."""
    return nearest_match(query_hashes, image_id, stored)


def lookup_radius(thresholds: Thresholds) -> int:
    """How far the hash lookup reaches for candidates: the similar radius, and at least
    ``MIN_LOOKUP_RADIUS`` unless the thresholds turn the hash off. A calibrated similar radius of
    2 bits (a trained CNN carrying the rule) must not keep a brightened copy at 10 bits out of
    the ranking; the verdict still follows the thresholds."""
    radius = thresholds.hash_radius
    return radius if radius < 0 else max(radius, MIN_LOOKUP_RADIUS)


def has_current_hash(row) -> bool:
    """Whether a catalog row's stored hash was made by this ``HASH_VERSION`` (comparable)."""
    return row.phash is not None and row.phash_version == HASH_VERSION


def tta_of(views: tuple[str, ...]) -> str:
    return "none" if len(views) == 1 else "d4"


def summarize(evidence: dict) -> str:
    """One line for people: which signals fired, how strongly, and which decided."""
    parts = ["same bytes (sha256)"] if evidence["exact"] else []
    if (hashed := evidence["hash"]) is not None:
        turned = f", as {hashed['transform']}" if hashed["transform"] not in (None, "identity") else ""
        view = f" · {hashed['stored']}" if hashed["stored"] else ""  # the result's bright/dark view
        parts.append(f"hash {hashed['distance']} bits{view}{turned}")
    if (cnn := evidence["cnn"]) is not None:
        clear = f", {cnn['margin']:.3f} clear of other images" if cnn.get("clear") else ""
        parts.append(f"CNN {cnn['score']:.3f}{clear}")
    # A fit that failed says little (small or flat images have few keypoints): the JSON has it.
    if (verification := evidence.get("verification")) is not None and verification["verified"]:
        parts.append(f"verified by {verification['inliers']} keypoints: {verification['explanation']}")
        agreement = verification.get("agreement")
        if disagrees(verification["inliers"], verification.get("reframed", True), agreement):
            parts.append(f"aligned by that fit, the images agree only {agreement:.2f}")
    if verification is not None and verification["recoloured"]:
        parts.append("in other colours")
    decided = ", ".join(evidence["decided_by"]) or "nothing"
    return f"{'; '.join(parts) or 'no evidence'} (decided by {decided})"


def family_margins(scores: dict[int, float], family: dict[int, int], floor: float = -1.0) -> dict[int, float]:
    """Each image's score minus the best score of any other family (at least ``floor``, the
    most an unseen image can score)."""
    best: dict[int, float] = {}
    for image_id, score in scores.items():
        best[family[image_id]] = max(score, best.get(family[image_id], -np.inf))
    top = sorted(best.items(), key=lambda item: -item[1])[:2]

    def rival(own: int) -> float:
        others = [score for fam, score in top if fam != own]
        return max(others[0] if others else floor, floor)

    return {image_id: score - rival(family[image_id]) for image_id, score in scores.items()}


def _distance(match: HashMatch | None) -> int | None:
    return None if match is None else match.distance


def _matched_transform(judgement: Judgement, match: HashMatch | None, view: str) -> str | None:
    """The dihedral map from query to result that the deciding signal saw, if not identity."""
    if "hash" in judgement.decided_by and match is not None:
        name = match.transform
    elif "cnn" in judgement.decided_by:
        name = view
    else:
        return None
    return name if name in DIHEDRAL and name != "identity" else None


def unverified_duplicates(results: list[dict], looked: set[int]) -> list[int]:
    """The ids of duplicates among ``results`` that verification has not looked at."""
    return [r["id"] for r in results if r["verdict"] == DUPLICATE and r["id"] not in looked]


def _rank_key(result: dict) -> tuple:
    # Within a verdict, the weight of all the evidence decides (a random-init CNN's 0.9984
    # against 0.9983 weighs nothing beside 0 against 2 hash bits; a trained CNN's 0.95 against
    # 0.60 outweighs a few bits of JPEG noise); then the CNN score and the hash distance.
    # Weights within 0.01 nats are equal evidence: with d4 pooling an image and its stored
    # turned/mirrored variants share one embedding, and the copy in the query's own pose
    # (no dihedral transform needed) goes first rather than whichever float noise favours.
    # Likewise the copy whose own hash matched before one matched through a stored photometric
    # view: a darkened query is 0 bits from the original's stored dark view and 0 bits from a
    # stored dark copy's plain hash, and the row that is the dark copy comes first.
    evidence = result["evidence"]
    hashed = evidence["hash"]
    distance = hashed["distance"] if hashed is not None else 65
    return (
        not result["exact"],
        RANK[result["verdict"]],
        -round(evidence["weight"], 2),
        evidence["transform"] is not None,
        hashed is not None and hashed["stored"] is not None,
        -result["score"],
        distance,
        result["id"],
    )


def check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


def check_verify_top(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 0 <= n <= MAX_VERIFY_TOP:
        raise ValueError(f"verify_top must be an integer from 0 to {MAX_VERIFY_TOP}, got {n!r}")
    return int(n)


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta
