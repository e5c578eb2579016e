"""Duplicate-group reports over the whole collection: pairs -> groups -> originals -> output.

``build_report`` reads the saved index (its model version, no network needed) and pairs images
the way search judges them, with the thresholds stored for the model version: a pair is a
duplicate when its CNN score is at or above the duplicate threshold (FAISS, ``search.pairs``)
OR its perceptual-hash distance, best over the 8 dihedral views, is at or below the duplicate
hash threshold (``search.report_hashes``). It joins pairs into groups, picks each group's
original by ``ORIGINAL_RULE``, gives every other member its evidence against the original (as
search's ``evidence`` field), sets known augmented variants aside (counted, and listed only on
request), checks how many known variant pairs were recovered, and says what changed since the
last recorded report.

CNN pairs are cached per model version (table ``report_pair_cache``), hash views and pairs in
``report_hash_cache``: a later report only searches (and decodes) the images added or changed
since, and drops pairs of removed ones. ``report_runs`` remembers each report's groups.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select

from twice.hashing import HASH_BITS
from twice.indexer import Catalog, ImageRow, IndexFileError, IndexMismatchError, VectorIndex
from twice.indexer.schema import PairCache, ReportRun

from .pairs import METHODS, canonical_pairs, chains_from, check_threshold, find_pairs, group_pairs, pair_graph
from .report_hashes import HashScan, scan_hashes
from .verdicts import RANK, Judgement, Thresholds, thresholds_for

LOG = logging.getLogger(__name__)

ORIGINAL_RULE = "largest resolution (width x height), then earliest added_at, then smallest id"
FORMATS = ("html", "json", "csv")
MAX_PER_PAGE = 1000
MAX_MISSED_LISTED = 50
# A group holding more than this share of the collection (and at least this many images) says
# the thresholds join unrelated images: the report warns.
LARGE_GROUP_SHARE = 0.5
LARGE_GROUP_MIN = 10
CHUNK = 500  # ids per SQL IN (...) clause, under SQLite's variable limit
CSV_COLUMNS = (
    "group",
    "group_size",
    "role",
    "id",
    "score",
    "verdict",
    "hash_distance",
    "hash_transform",
    "hash_stored",
    "hash_stored_of",
    "decided_by",
    "via",
    "source",
    "page_url",
    "path",
    "width",
    "height",
    "format",
    "bytes",
    "added_at",
    "parent_id",
    "transform",
    "change",
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def open_catalog(options) -> Catalog:
    return Catalog(options.catalog_url)


# the scan: vectors -> pairs -> groups --------------------------------------------------------


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
    a, b, s, cache = _pairs_with_cache(
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


def _pairs_with_cache(catalog, vectors, ids, xb, keys, cut, method, incremental, progress):
    """Reuse cached pairs among unchanged vectors; search only what is new."""
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
    with catalog.session() as session:
        # Delete, then insert: the write lock is taken by the first statement, so two
        # reports saving at once queue up instead of racing to insert the same key.
        # Pairs of another model version go too: a new model re-embeds everything.
        session.execute(delete(PairCache))
        session.add(
            PairCache(
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
        )


# originals and variants ----------------------------------------------------------------------


def original_key(row: ImageRow) -> tuple:
    """Sort key of ``ORIGINAL_RULE``: the smallest key is the original."""
    added = row.added_at.timestamp() if row.added_at is not None else float("inf")
    return (-(row.width * row.height), added, row.id)


def pick_original(rows: list[ImageRow]) -> ImageRow:
    """The original of a group by ``ORIGINAL_RULE``."""
    if not rows:
        raise ValueError("pick_original needs at least one row")
    return min(rows, key=original_key)


def variant_parents(catalog: Catalog) -> dict[int, tuple[int, str | None]]:
    """Every known variant: id -> (parent_id, transform)."""
    with catalog.session() as session:
        rows = session.execute(
            select(ImageRow.id, ImageRow.parent_id, ImageRow.transform).where(ImageRow.parent_id.is_not(None))
        ).all()
    return {int(i): (int(p), t) for i, p, t in rows}


def family_root(image_id: int, parents: dict[int, tuple[int, str | None]]) -> int:
    """The first ancestor without a parent (a cycle stops the walk)."""
    seen = {image_id}
    while image_id in parents:
        image_id = parents[image_id][0]
        if image_id in seen:
            break
        seen.add(image_id)
    return image_id


def known_variants(group: list[int], parents: dict[int, tuple[int, str | None]]) -> set[int]:
    """Members that are variants of another member's family: expected duplicates."""
    roots = {i: family_root(i, parents) for i in group}
    families = Counter(roots.values())
    return {i for i in group if i in parents and families[roots[i]] > 1}


def get_rows(catalog: Catalog, ids: list[int]) -> dict[int, ImageRow]:
    rows: dict[int, ImageRow] = {}
    for start in range(0, len(ids), CHUNK):
        rows.update(catalog.get_many(ids[start : start + CHUNK]))
    return rows


def variant_recall(scan: DuplicateScan, parents: dict[int, tuple[int, str | None]]) -> dict:
    """Known variant pairs (variant, parent) with both vectors: how many were found as pairs."""
    pairs = scan.pairs
    signals = {
        key: (bool(c), bool(h))
        for key, c, h in zip(pairs.keys_list(), pairs.by_cnn.tolist(), pairs.by_hash.tolist(), strict=True)
    }
    present = set(scan.ids.tolist())
    by_transform: dict[str, list[int]] = {}
    by_signal = Counter()
    missed, recovered, total = [], 0, 0
    for child, (parent, transform) in sorted(parents.items()):
        if child not in present or parent not in present:
            continue
        total += 1
        fired = signals.get((min(child, parent), max(child, parent)))
        hit = fired is not None
        recovered += hit
        by_signal.update(name for name, on in zip(("cnn", "hash"), fired or (), strict=False) if on)
        counts = by_transform.setdefault(transform or "unknown", [0, 0])
        counts[0] += hit
        counts[1] += 1
        if not hit:
            missed.append(missed_pair(scan, child, parent, transform))
    missed.sort(key=lambda m: m["score"])
    return {
        "recovered": recovered,
        "total": total,
        "by_signal": {"cnn": by_signal["cnn"], "hash": by_signal["hash"]},
        "by_transform": {t: {"recovered": r, "total": n} for t, (r, n) in sorted(by_transform.items())},
        "missed": missed[:MAX_MISSED_LISTED],
        "missed_total": len(missed),
    }


def missed_pair(scan: DuplicateScan, child: int, parent: int, transform: str | None) -> dict:
    """A known variant pair that no signal found, with how near each signal came."""
    score, _, hashed = scan.judge(parent, child)
    distance = None if hashed is None else hashed["distance"]
    return {
        "id": child,
        "parent_id": parent,
        "transform": transform,
        "score": round(score, 6),
        "hash_distance": distance,
    }


# what changed --------------------------------------------------------------------------------


def last_run(catalog: Catalog) -> ReportRun | None:
    with catalog.session() as session:
        return session.scalar(select(ReportRun).order_by(ReportRun.id.desc()).limit(1))


def classify_groups(previous: list[list[int]], current: list[list[int]]) -> tuple[list[str], int]:
    """Per current group: new | grown | changed | unchanged; and how many old groups are gone."""
    owner = {i: n for n, group in enumerate(previous) for i in group}
    labels, touched_any = [], set()
    for group in current:
        touched = {owner[i] for i in group if i in owner}
        touched_any |= touched
        if not touched:
            labels.append("new")
        elif len(touched) == 1 and set(previous[next(iter(touched))]) == set(group):
            labels.append("unchanged")
        elif len(touched) == 1 and set(previous[next(iter(touched))]) < set(group):
            labels.append("grown")
        else:
            labels.append("changed")
    return labels, len(previous) - len(touched_any)


def describe_changes(
    catalog: Catalog, previous: ReportRun | None, scan: DuplicateScan, labels: list[str], gone: int
) -> dict | None:
    if previous is None:
        return None
    with catalog.session() as session:
        added = session.scalar(
            select(func.count()).select_from(ImageRow).where(ImageRow.added_at > previous.created_at)
        )
    counts = Counter(labels)
    return {
        "since": previous.created_at.isoformat(),
        "previous_model": previous.model_version,
        "model_changed": previous.model_version != scan.model_version,
        "previous_threshold": previous.threshold,
        "images_then": previous.images,
        "images_now": len(scan.ids),
        "images_added": int(added or 0),
        "groups_then": len(previous.groups),
        "groups_now": len(scan.groups),
        "new_groups": counts["new"],
        "grown_groups": counts["grown"],
        "changed_groups": counts["changed"],
        "unchanged_groups": counts["unchanged"],
        "gone_groups": gone,
    }


# the report ----------------------------------------------------------------------------------


def member_dict(
    row: ImageRow, role: str, score: float, scan: DuplicateScan, options, evidence=None, via=()
) -> dict:
    """One image of a group; ``via``: the images that chain it to the original when the two are
    not a duplicate pair themselves (single linkage joins A-B-C though A-C may be different)."""
    score = float(np.clip(score, -1.0, 1.0))
    verdict = scan.thresholds.verdict(score) if evidence is None else evidence.pop("verdict")
    return {
        "id": row.id,
        "role": role,
        "score": round(score, 6),
        "verdict": verdict,
        "evidence": evidence,
        "via": list(via),
        "source": row.source,
        "page_url": row.page_url,
        "path": str(Path(options.images_dir) / row.stored_path),
        "width": row.width,
        "height": row.height,
        "format": row.format,
        "bytes": row.bytes,
        "added_at": row.added_at.isoformat() if row.added_at else None,
        "parent_id": row.parent_id,
        "transform": row.transform,
    }


def member_evidence(scan: DuplicateScan, original: int, member: int) -> tuple[float, dict]:
    """A member's CNN score to the original and its evidence, shaped as search's ``evidence``.

    ``transform`` is the dihedral map from the original to the member when the hash decided;
    ``hash.stored_of`` says whose stored photometric view ``hash.stored`` is ("original" or
    "member"; in search it is always the result's).
    """
    score, judgement, hashed = scan.judge(original, member)
    if hashed is not None:
        hashed["verdict"] = judgement.hash
    decided_by_hash = hashed is not None and "hash" in judgement.decided_by
    transform = hashed["transform"] if decided_by_hash else None
    return score, {
        "verdict": judgement.verdict,
        "signals": judgement.signals,
        "decided_by": judgement.decided_by,
        "exact": False,  # one row per sha256: two catalog images never share bytes
        "hash": hashed,
        "cnn": {"score": round(score, 6), "verdict": judgement.cnn},
        "transform": None if transform == "identity" else transform,
    }


def member_rank(member: dict) -> tuple:
    """Search's order: verdict, signals that fired, hash-decided first, CNN score, hash distance."""
    evidence = member["evidence"]
    fired_hash = evidence["hash"]["distance"] if "hash" in evidence["signals"] else HASH_BITS + 1
    return (
        RANK[member["verdict"]],
        -len(evidence["signals"]),
        "hash" not in evidence["decided_by"],
        -member["score"],
        fired_hash,
        member["id"],
    )


def describe_group(group, rows, parents, scan, options, include_variants: bool) -> dict:
    """One group: the original first, then the others in search's order against it."""
    original = pick_original([rows[i] for i in group])
    expected = known_variants(group, parents) - {original.id}
    chains = chains_from(original.id, scan.graph)
    others = []
    for i in group:
        if i == original.id or (i in expected and not include_variants):
            continue
        role = "variant" if i in expected else "duplicate"
        score, evidence = member_evidence(scan, original.id, i)
        others.append(member_dict(rows[i], role, score, scan, options, evidence, chains[i]))
    others.sort(key=member_rank)
    findings = len(group) - 1 - len(expected)
    distances = [m["evidence"]["hash"]["distance"] for m in others if m["evidence"]["hash"] is not None]
    return {
        "size": len(group),
        "findings": findings,
        "hidden_variants": 0 if include_variants else len(expected),
        "known_variants": len(expected),
        "max_score": max((m["score"] for m in others), default=None),
        "min_score": min((m["score"] for m in others), default=None),
        "min_hash_distance": min(distances, default=None),
        "members": [member_dict(original, "original", 1.0, scan, options), *others],
    }


def build_report(
    options,
    model_version: str | None = None,
    threshold: float | None = None,
    include_variants: bool = False,
    page: int | None = None,
    per_page: int | None = None,
    method: str = "knn",
    incremental: bool = True,
    record: bool = False,
    progress: bool = False,
    nprobe: int | None = None,
    workers: int = 0,
) -> dict:
    """The duplicate report as a JSON-ready dict (see the module docstring).

    ``model_version``: refuse an index of another model (None: whatever the index holds).
    ``page``/``per_page``: return one page of listed groups (1-based; both or neither).
    ``record``: remember this report's groups, so the next one says what changed.
    ``nprobe``: inverted lists visited per query when the index is IVF (default: the index's).
    ``workers``: processes decoding images whose hash views are not cached (0: this one).
    """
    started = time.perf_counter()
    page, per_page = check_page(page, per_page)
    catalog = open_catalog(options)
    try:
        scan = scan_duplicates(
            options, catalog, model_version, threshold, method, incremental, progress, nprobe, workers
        )
        report = assemble(scan, catalog, options, include_variants)
        if record:
            record_run(catalog, scan, report)
    finally:
        catalog.close()
    report["took_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return paginate(report, page, per_page)


def assemble(scan: DuplicateScan, catalog: Catalog, options, include_variants: bool) -> dict:
    parents = variant_parents(catalog)
    rows = get_rows(catalog, sorted({i for g in scan.groups for i in g}))
    previous = last_run(catalog)
    labels, gone = classify_groups(previous.groups if previous else [], scan.groups)
    listed, summarised = [], Counter()
    for group, label in zip(scan.groups, labels, strict=True):
        entry = describe_group(group, rows, parents, scan, options, include_variants)
        entry["change"] = label if previous is not None else None
        summarised["variants"] += entry["known_variants"]
        if entry["findings"] == 0 and not include_variants:
            summarised["groups"] += 1
            summarised["images"] += entry["size"]
            continue
        listed.append(entry)
    listed.sort(key=lambda g: (-g["size"], -(g["max_score"] or 0.0), g["members"][0]["id"]))
    for number, entry in enumerate(listed, 1):
        entry["group"] = number
    in_groups = sum(len(g) for g in scan.groups)
    return {
        "generated_at": utcnow().isoformat(),
        "model": scan.model_version,
        "index": {
            "type": scan.index_type,
            "approximate": scan.index_type.startswith("IVF"),
            "nprobe": scan.nprobe if scan.index_type.startswith("IVF") else None,
        },
        "threshold": scan.threshold,
        "hash_threshold": scan.hash_threshold,
        "thresholds": scan.thresholds.to_dict(),
        "original_rule": ORIGINAL_RULE,
        "include_variants": include_variants,
        "summary": {
            "images": len(scan.ids),
            "pending": scan.pending,
            "pairs": len(scan.pairs),
            "pairs_by": scan.pairs.counts(),
            "hashed_images": len(scan.hashes.ids),
            "groups": len(scan.groups),
            "groups_listed": len(listed),
            "images_in_groups": in_groups,
            "duplicate_images": in_groups - len(scan.groups),
            "variant_only_groups": summarised["groups"],
            "variant_only_images": summarised["images"],
            "known_variants_in_groups": summarised["variants"],
        },
        "recall": variant_recall(scan, parents),
        "warnings": threshold_warnings(scan),
        "changes": describe_changes(catalog, previous, scan, labels, gone),
        "cache": scan.cache,
        "groups": listed,
    }


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


def record_run(catalog: Catalog, scan: DuplicateScan, report: dict) -> None:
    with catalog.session() as session:
        session.add(
            ReportRun(
                model_version=scan.model_version,
                threshold=scan.threshold,
                images=len(scan.ids),
                groups=scan.groups,
                summary=report["summary"],
            )
        )


def check_page(page: int | None, per_page: int | None) -> tuple[int | None, int | None]:
    """Validate paging arguments: both or neither; page >= 1; 1 <= per_page <= MAX_PER_PAGE."""
    if page is None and per_page is None:
        return None, None
    page = 1 if page is None else page
    per_page = 50 if per_page is None else per_page
    if not isinstance(page, int) or isinstance(page, bool) or page < 1:
        raise ValueError(f"page must be an integer >= 1, got {page!r}")
    if not isinstance(per_page, int) or isinstance(per_page, bool) or not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be an integer from 1 to {MAX_PER_PAGE}, got {per_page!r}")
    return page, per_page


def paginate(report: dict, page: int | None, per_page: int | None) -> dict:
    total = len(report["groups"])
    if page is None:
        report["pagination"] = None
        return report
    start = (page - 1) * per_page
    report["groups"] = report["groups"][start : start + per_page]
    report["pagination"] = {
        "page": page,
        "per_page": per_page,
        "total_groups": total,
        "pages": max(1, -(-total // per_page)),
    }
    return report


# output --------------------------------------------------------------------------------------


def report_csv(report: dict) -> str:
    """One row per listed member; the original of each group first (role ``original``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for group in report["groups"]:
        for member in group["members"]:
            writer.writerow(
                {
                    **member,
                    **evidence_columns(member["evidence"]),
                    "via": via_cell(member),
                    "group": group["group"],
                    "group_size": group["size"],
                    "change": group.get("change"),
                }
            )
    return buffer.getvalue()


def evidence_columns(evidence: dict | None) -> dict:
    """The evidence as flat CSV cells (empty for the original, compared with nothing)."""
    if evidence is None:
        return {}
    hashed = evidence["hash"] or {}
    return {
        "hash_distance": hashed.get("distance"),
        "hash_transform": hashed.get("transform"),
        "hash_stored": hashed.get("stored"),
        "hash_stored_of": hashed.get("stored_of"),
        "decided_by": "+".join(evidence["decided_by"]),
    }


def via_cell(member: dict) -> str:
    return " ".join(str(i) for i in member.get("via", ()))


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def render(report: dict, fmt: str, out_path: Path | None = None, progress: bool = False) -> str:
    """The report as text in ``fmt`` (html, json or csv); HTML links are relative to ``out_path``."""
    if fmt == "json":
        return report_json(report)
    if fmt == "csv":
        return report_csv(report)
    if fmt == "html":
        from .report_html import report_html

        return report_html(report, out_path, progress)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def format_for(path: str | Path | None, fmt: str | None) -> str:
    """The output format: the one given, else the file suffix, else HTML."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(str(path)).suffix.lower().lstrip(".") if path not in (None, "-") else ""
    return {"htm": "html", "html": "html", "json": "json", "csv": "csv"}.get(suffix, "html")


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal."""
    s, r = report["summary"], report["recall"]
    lines = [
        f"{s['images']} images, {s['pairs']} duplicate pairs: {pair_rule(report)}"
        f" ({report['thresholds']['source']} thresholds, model {report['model']},"
        f" index {report['index']['type']})",
        f"{s['groups']} duplicate groups: {s['groups_listed']} listed,"
        f" {s['variant_only_groups']} of known variants only (summarised);"
        f" {s['duplicate_images']} images are copies of another",
        f"recall check: {r['recovered']}/{r['total']} known variant pairs recovered"
        + ("".join(f"; {t} {v['recovered']}/{v['total']}" for t, v in r["by_transform"].items())),
    ]
    if s["hashed_images"] < s["images"] and report["hash_threshold"] >= 0:
        lines.append(
            f"{s['images'] - s['hashed_images']} images have no usable perceptual hash, so only CNN pairs:"
            " run `twice reindex` to compute them"
        )
    if s["pending"]:
        lines.append(f"{s['pending']} catalogued images have no vector yet: run `twice reindex`")
    lines += [f"warning: {w}" for w in report["warnings"]]
    c = report["changes"]
    if c:
        lines.append(
            f"since the last report ({c['since']}): {c['images_added']} images added,"
            f" {c['new_groups']} new groups, {c['grown_groups']} grown, {c['changed_groups']} changed,"
            f" {c['unchanged_groups']} unchanged, {c['gone_groups']} gone"
        )
    if report["index"]["approximate"]:
        lines.append(
            f"approximate index (nprobe {report['index']['nprobe']}): a few pairs may be missed;"
            " raise --nprobe to search more of it"
        )
    cache = report["cache"]
    how = "all pairs computed" if cache["full"] else f"{cache['reused_pairs']} cached pairs reused"
    hashed = cache["hash"]
    if hashed.get("off"):
        hashes = "hash pairs off"
    else:
        reused = (
            "all hash pairs computed"
            if hashed["full"]
            else f"{hashed['reused_pairs']} cached hash pairs reused"
        )
        hashes = f"{reused}, {hashed['decoded']} images hashed"
    lines.append(f"{how}; searched {cache['searched']} vectors; {hashes}; {report['took_ms'] / 1000:.1f}s")
    return lines


def pair_rule(report: dict) -> str:
    """``CNN >= 0.9 (12) or hash <= 8 bits (30)``: the pairing rule and what each found."""
    by = report["summary"]["pairs_by"]
    rule = f"CNN >= {report['threshold']:.6g} ({by['cnn']})"
    if report["hash_threshold"] >= 0:
        rule += f" or hash <= {report['hash_threshold']} bits ({by['hash']})"
    return rule


# benchmark -----------------------------------------------------------------------------------

BENCH_MODEL = "bench-synthetic"


def run_benchmark(
    n: int,
    index_kind: str = "flat",
    dim: int = 256,
    groups: int | None = None,
    method: str = "knn",
    workdir: str | Path | None = None,
    seed: int = 0,
    nprobe: int | None = None,
) -> dict:
    """Time and peak memory of a full and an incremental report on ``n`` synthetic vectors.

    Random unit vectors plus planted near-duplicate groups (half of them marked as known
    variants) go into a real catalog and saved index; each stage runs in a fresh process so
    that its peak RSS is its own. ``found_all`` says whether the groups equal the planted ones.
    """
    import tempfile

    if index_kind not in ("flat", "ivf"):
        raise ValueError(f"index_kind must be 'flat' or 'ivf', got {index_kind!r}")
    groups = max(1, n // 100) if groups is None else groups
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="twice-bench-") as tmp:
        result = {
            "n": n,
            "dim": dim,
            "index": index_kind,
            "method": method,
            "nprobe": nprobe,
            "planted_groups": groups,
        }
        stages = [
            ("setup", _bench_setup, (tmp, n, dim, index_kind, groups, seed)),
            ("full", _bench_report, (tmp, method, False, nprobe)),
            ("grow", _bench_grow, (tmp, max(1, n // 100), seed + 1)),
            ("incremental", _bench_report, (tmp, method, True, nprobe)),
        ]
        for name, target, args in stages:
            result[name] = _in_fresh_process(target.__name__, args)
            LOG.info("bench n=%d %s %s: %s", n, index_kind, name, result[name])
    return result


def _in_fresh_process(function: str, args: tuple) -> dict:
    """Run ``search.report.<function>(*args)`` in a new interpreter; its peak RSS is its own."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from search import report\n"
        "result = getattr(report, sys.argv[1])(*json.loads(sys.argv[2]))\n"
        "sys.stdout.write(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, function, json.dumps(args)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark stage {function} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _bench_options(folder: str):
    from twice.options import Options

    return Options(data_dir=Path(folder) / "data", flat_limit=10**9)


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _bench_setup(folder: str, n: int, dim: int, index_kind: str, groups: int, seed: int) -> dict:
    from .pairs import plant_groups

    started = time.perf_counter()
    options = _bench_options(folder)
    xb, planted = plant_groups(n, dim, groups, seed=seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    planted = [[i + 1 for i in g] for g in planted]
    parents = {m: g[0] for k, g in enumerate(planted) if k % 2 == 0 for m in g[1:]}
    _bench_catalog(options, ids, parents)
    vectors = _bench_index(index_kind, dim, xb, ids)
    vectors.save(options.index_path)
    (Path(folder) / "planted.json").write_text(json.dumps(planted))
    return {"seconds": round(time.perf_counter() - started, 2), "variant_pairs": len(parents)}


def _bench_catalog(options, ids: np.ndarray, parents: dict[int, int], when: datetime | None = None) -> None:
    from sqlalchemy import insert

    catalog = open_catalog(options)
    when = when or utcnow()
    try:
        for start in range(0, len(ids), 50_000):
            chunk = ids[start : start + 50_000].tolist()
            rows = [
                {
                    "id": i,
                    "sha256": f"{i:064x}",
                    "stored_path": f"bench/{i}.jpg",
                    "source": f"bench/{i}.jpg",
                    "width": 320 if i in parents else 640,
                    "height": 240 if i in parents else 480,
                    "format": "JPEG",
                    "bytes": 1000,
                    "parent_id": parents.get(i),
                    "transform": "jitter" if i in parents else None,
                    "added_at": when,
                }
                for i in chunk
            ]
            # Parents first: the foreign key must find them.
            rows.sort(key=lambda r: r["parent_id"] is not None)
            with catalog.session() as session:
                session.execute(insert(ImageRow), rows)
    finally:
        catalog.close()


def _bench_index(index_kind: str, dim: int, xb: np.ndarray, ids: np.ndarray) -> VectorIndex:
    import faiss

    from twice.indexer.vectors import ivf_nlist

    if index_kind == "flat":
        vectors = VectorIndex(BENCH_MODEL, dim, flat_limit=10**9)
        vectors.add(ids, xb)
        return vectors
    nlist = ivf_nlist(len(xb))
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = xb[np.random.default_rng(0).choice(len(xb), size=min(len(xb), nlist * 64), replace=False)]
    index.train(sample)
    index.add_with_ids(xb, ids)
    return VectorIndex(BENCH_MODEL, dim, index=index, flat_limit=10**9)


def _bench_grow(folder: str, m: int, seed: int) -> dict:
    """Add ``m`` vectors: one jittered copy of each of the first 10 planted bases, rest random."""
    started = time.perf_counter()
    options = _bench_options(folder)
    planted = json.loads((Path(folder) / "planted.json").read_text())
    vectors = VectorIndex.load(options.index_path)
    base_ids = np.array([g[0] for g in planted[: min(10, m)]], dtype=np.int64)
    all_ids, all_xb = vectors.vectors()
    rng = np.random.default_rng(seed)
    new = rng.standard_normal((m, vectors.dim), dtype=np.float32)
    bases = all_xb[np.searchsorted(all_ids, base_ids)]
    new[: len(bases)] = bases + rng.standard_normal(bases.shape, dtype=np.float32) * (
        0.2 / np.sqrt(vectors.dim)
    )
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    new_ids = np.arange(int(all_ids.max()) + 1, int(all_ids.max()) + 1 + m, dtype=np.int64)
    _bench_catalog(options, new_ids, {})
    vectors.add(new_ids, new)
    vectors.save(options.index_path)
    for k, new_id in enumerate(new_ids[: len(bases)].tolist()):
        planted[k].append(new_id)
    (Path(folder) / "planted.json").write_text(json.dumps(planted))
    return {"seconds": round(time.perf_counter() - started, 2), "added": m}


def _bench_report(folder: str, method: str, incremental: bool, nprobe: int | None) -> dict:
    baseline = _peak_rss_mb()
    options = _bench_options(folder)
    started = time.perf_counter()
    report = build_report(options, method=method, incremental=incremental, record=True, nprobe=nprobe)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    catalog = open_catalog(options)
    try:
        found = sorted(sorted(g) for g in last_run(catalog).groups)
    finally:
        catalog.close()
    planted = sorted(sorted(g) for g in json.loads((Path(folder) / "planted.json").read_text()))
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak,
        "rss_before_mb": baseline,
        "groups_found": len(found),
        "found_all": found == planted,
        "recall": f"{report['recall']['recovered']}/{report['recall']['total']}",
        "cache": report["cache"],
    }
