"""Perceptual-hash pairs for duplicate reports: every stored image against every other.

Search compares a query's 8 dihedral hash views with the stored hashes. A report does the
same with every stored image as the query, so it needs each image's views: they come from one
decode of the stored file (``decode_stored``: the decode search gives a query), and
view 0 is the catalog's stored hash, the hash search compares against; after the 8 views come
the catalog's stored photometric views (``STORED_VIEWS``: the image brightened and darkened),
which search compares a query's views with too. A pair's distance is the nearer of its two
directions (``pair_match``), as search would see it from either side: a brightened copy pairs
with its original through the original's bright view.

Each image's hash structure (``twice.hashing.hash_structure``: how many strong DCT
coefficients, how much a hash match of it says) comes from the same decode, as search takes a
query's, and is cached beside its views.

Pairs come from the multi-index lookup, never a scan: a full run is ``hash_pairs``; a later run
searches only the new images' views against every stored hash, and every image's views
against the new images' hashes (``pairs_touching``). Views and pairs are cached (table
``report_hash_cache``), so a later report decodes and searches only what is new. Neither
depends on the model, so the cache outlives a model change; a change of the hash function
(``cache_key``) or of an image's stored hash makes it decode again.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import delete
from tqdm import tqdm

from twice.files import ImageStore
from twice.hashing import (
    DIHEDRAL,
    INVERSE,
    STORED_VIEWS,
    HashIndex,
    HashMatch,
    check_radius,
    dihedral_hashes,
    hash_pairs,
    hash_structure,
    nearest_match,
    stored_hashes,
    stored_of,
    stored_present,
    view_distances,
)
from twice.imageio import DecodedImage, ImageError, decode_image, read_file_bytes
from twice.indexer import Catalog
from twice.indexer.batches import iter_batches
from twice.indexer.catalog import load_stored_hashes, upsert
from twice.indexer.schema import HashPairCache
from twice.model.version import draft_side_of

LOG = logging.getLogger(__name__)

# The hash kind the cache holds; ``cache_key`` adds a fingerprint of the hash function itself.
HASH_SCHEME = "phash-dct64-trimmed-dihedral8-photometric2-structure"
NO_HASH = 65  # distance of a pair where one side has no views: never fires
NO_STRUCTURE = -1  # an image without views: its structure is unknown
TURNS = len(DIHEDRAL)
VIEWS = TURNS + len(STORED_VIEWS)  # a row of views: 8 dihedral hashes, then the stored photometric ones
CHUNK_PAIRS = 1 << 16


@lru_cache(maxsize=1)
def cache_key() -> str:
    """``HASH_SCHEME`` and the hashes of a fixed probe image: views cached by another version
    of the hash function (whose stored hashes reindex recomputes) are not reused."""
    ramp = (np.add.outer(np.arange(24) * 11, np.arange(32) * 5) ** 2 // 7) % 256
    image = Image.fromarray(ramp.astype(np.uint8))
    probe = np.r_[dihedral_hashes(image), [h or 0 for h in stored_hashes(image)]]
    return f"{HASH_SCHEME}-{hashlib.sha256(probe.astype(np.int64).tobytes()).hexdigest()[:16]}"


# pairs ---------------------------------------------------------------------------------------


def pair_match(a: int, views_a: np.ndarray, b: int, views_b: np.ndarray) -> HashMatch:
    """The nearer direction of the pair (a, b): ``transform`` turns image a into image b.

    a's dihedral views against b's stored hashes (plain and photometric), or b's against a's
    (inverted); ``stored`` names the photometric view that matched, of either side
    (``pair_evidence`` says which). Ties go to a's views against b's stored hashes, then to the
    plain hash, then to the earlier view.
    """
    return pair_evidence(a, views_a, b, views_b)[0]


def pair_evidence(a: int, views_a: np.ndarray, b: int, views_b: np.ndarray) -> tuple[HashMatch, int | None]:
    """``pair_match``, and whose stored photometric view matched: a or b (an id), None when a
    plain hash did."""
    views_a, views_b = np.asarray(views_a, np.int64), np.asarray(views_b, np.int64)
    forward = nearest_match(views_a[:TURNS], b, stored_of(views_b[None])[0])
    backward = nearest_match(views_b[:TURNS], a, stored_of(views_a[None])[0])
    if forward.distance <= backward.distance:
        return forward, None if forward.stored is None else b
    inverted = HashMatch(b, backward.distance, INVERSE[backward.transform], backward.stored)
    return inverted, None if backward.stored is None else a


def pairs_touching(
    ids: np.ndarray, views: np.ndarray, new: np.ndarray, radius: int
) -> dict[tuple[int, int], HashMatch]:
    """The pairs of ``hash_pairs(ids, views, radius)`` that have a member in ``new``.

    ``ids`` ascending (as ``hash_pairs`` needs them for its ties); ``new`` a mask over them.
    Each new image's dihedral views are looked up among the stored hashes (plain and
    photometric, of every image), and its stored hashes among every image's 8 dihedral views,
    so both directions are found without a scan; ``pair_match`` then settles each pair.
    """
    radius = check_radius(radius)
    ids, views = np.asarray(ids, np.int64), np.asarray(views, np.int64)
    stored_all = stored_of(views)
    stored = HashIndex.of_stored(ids, stored_all)
    turns = views[:, :TURNS]
    every_view = HashIndex(np.arange(turns.size, dtype=np.int64), turns.reshape(-1))  # pos * 8 + view
    position = {int(i): p for p, i in enumerate(ids.tolist())}
    found: set[tuple[int, int]] = set()
    for p in np.flatnonzero(new).tolist():
        others = [position[m.id] for m in stored.search(turns[p], radius)]
        own = stored_all[p][stored_present(stored_all[p])]
        others += [m.id // TURNS for m in every_view.search(own, radius)]
        found.update((min(p, q), max(p, q)) for q in others if q != p)
    pairs = {}
    for p, q in sorted(found):
        a, b = int(ids[p]), int(ids[q])
        match = pair_match(a, views[p], b, views[q])
        if match.distance <= radius:
            pairs[(a, b)] = match
    return pairs


def as_arrays(pairs: dict[tuple[int, int], HashMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """{(a, b): match} -> (a, b, distance) sorted by (a, b)."""
    keys = sorted(pairs)
    a = np.fromiter((k[0] for k in keys), np.int64, len(keys))
    b = np.fromiter((k[1] for k in keys), np.int64, len(keys))
    d = np.fromiter((pairs[k].distance for k in keys), np.int8, len(keys))
    return a, b, d


# views ---------------------------------------------------------------------------------------


@dataclass
class HashScan:
    """Views of the images that have them, and the pairs within ``radius`` bits."""

    radius: int  # -1: hashes are off
    ids: np.ndarray  # sorted catalog ids with views
    views: np.ndarray  # (len(ids), VIEWS) int64: view 0 the stored hash; 8, 9 the stored bright, dark
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (a, b, distance), a < b
    cache: dict = field(default_factory=dict)
    structure: np.ndarray | None = None  # (len(ids),) strong DCT coefficients of each image

    def structures(self, image_ids: np.ndarray) -> np.ndarray:
        """Each image's hash structure; ``NO_STRUCTURE`` where it has no views."""
        pos, found = self._rows(image_ids)
        out = np.full(len(pos), NO_STRUCTURE, np.int64)
        if self.structure is not None:
            out[found] = self.structure[pos[found]]
        return out

    def _rows(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image_ids = np.asarray(image_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, image_ids), max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == image_ids) if len(self.ids) else np.zeros(len(image_ids), bool)
        return pos, found

    def match(self, a: int, b: int) -> tuple[HashMatch, int | None] | None:
        """Hash evidence between two images (transform turns a into b) and whose stored
        photometric view matched (``pair_evidence``); None without views."""
        (pa, pb), found = self._rows(np.array([a, b]))
        if not found.all():
            return None
        return pair_evidence(a, self.views[pa], b, self.views[pb])

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Best distance of each pair (a[i], b[i]); ``NO_HASH`` where a side has no views."""
        out = np.full(len(a), NO_HASH, np.int64)
        (pa, fa), (pb, fb) = self._rows(a), self._rows(b)
        both = np.flatnonzero(fa & fb)
        for start in range(0, len(both), CHUNK_PAIRS):  # (chunk, 8, 3) at a time, not (pairs, 8, 3)
            rows = both[start : start + CHUNK_PAIRS]
            va, vb = self.views[pa[rows]], self.views[pb[rows]]
            forward = view_distances(va[:, :TURNS], stored_of(vb))
            backward = view_distances(vb[:, :TURNS], stored_of(va))
            out[rows] = np.minimum(forward, backward)
        return out


def decode_stored(path: Path, options, draft_side: int) -> DecodedImage:
    """A stored image decoded as search decodes a query (JPEGs at the embedder's
    ``draft_side``), so its hashes and embeddings compare with a query's."""
    data = read_file_bytes(path, options.max_image_bytes)
    return decode_image(data, str(path), options.max_image_bytes, options.max_image_pixels, draft_side)


class StoredViews:
    """Dihedral hashes and hash structure of stored images, from one decode each (the decode
    search gives a query: JPEGs at the embedder's draft side), computed as search computes a
    query's: the views of the trimmed content (``dihedral_hashes``), the structure of the whole
    image (``hash_structure``)."""

    def __init__(self, items: list[tuple[int, Path]], options) -> None:
        self.items, self.options = items, options
        self.draft_side = draft_side_of(options)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image_id, path = self.items[i]
        try:
            decoded = decode_stored(path, self.options, self.draft_side)
        except ImageError as exc:
            return {"id": image_id, "error": exc}
        image = decoded.image
        return {"id": image_id, "hashes": dihedral_hashes(image), "structure": hash_structure(image)}


def stored_views(options, items: list[tuple[int, Path]], workers: int, progress: bool):
    """(ids, views, structure, skipped) of the stored images ``items``, decoded in worker processes."""
    ids, views, structure, skipped = [], [], [], Counter()
    dataset = StoredViews(items, options)
    workers = workers if len(items) >= 4 * options.batch_size else 0
    bar = tqdm(total=len(items), desc="hashing images", unit="img", disable=not progress)
    for batch in iter_batches(dataset, options.batch_size, workers):
        for item in batch:
            if "error" in item:
                skipped[item["error"].reason] += 1
                LOG.warning("no hash views for image %d: %s", item["id"], item["error"])
            else:
                ids.append(item["id"])
                views.append(item["hashes"])
                structure.append(item["structure"])
        bar.update(len(batch))
    bar.close()
    views = np.stack(views).astype(np.int64) if views else np.zeros((0, TURNS), np.int64)
    return np.asarray(ids, np.int64), views, np.asarray(structure, np.int64), skipped


def scan_hashes(
    catalog: Catalog,
    options,
    ids: np.ndarray,
    keys: np.ndarray,
    radius: int,
    incremental: bool = True,
    workers: int = 0,
    progress: bool = False,
) -> HashScan:
    """Views of the ``ids`` (sorted) that have a stored hash, and their pairs within ``radius``.

    ``keys`` tell a cached image from new bytes under a reused id. ``radius`` -1 turns hashes
    off: nothing is decoded. Images that cannot be decoded are logged and left out.
    """
    if radius < 0:
        empty = np.zeros(0, np.int64)
        return HashScan(
            radius, empty, np.zeros((0, VIEWS), np.int64), (empty, empty, empty), {"off": True}, empty
        )
    radius = check_radius(radius)
    hashed, stored = load_stored_hashes(catalog)
    wanted = np.isin(ids, hashed)
    ids, keys, stored = ids[wanted], keys[wanted], stored[np.searchsorted(hashed, ids[wanted])]
    cached = _load(catalog) if incremental else None
    known = _known(cached, ids, keys, stored)
    views = np.zeros((len(ids), VIEWS), np.int64)
    structure = np.full(len(ids), NO_STRUCTURE, np.int64)
    if cached is not None:
        at = np.searchsorted(cached["ids"], ids[known])
        views[known], structure[known] = cached["views"][at], cached["structure"][at]
    fresh, fresh_structure, decoded = _decode_new(catalog, options, ids[~known], workers, progress)
    views[~known], structure[~known] = fresh, fresh_structure
    have = known.copy()
    have[~known] = decoded
    ids, keys, views, known, structure = ids[have], keys[have], views[have], known[have], structure[have]
    views[:, 0] = stored[have, 0]  # what search compares a query with
    views[:, TURNS:] = stored[have, 1:]
    reuse = cached is not None and cached["radius"] >= radius
    pairs, facts = _pairs(ids, views, known if reuse else None, cached, radius)
    _save(catalog, radius if not reuse else cached["radius"], ids, keys, views, structure, pairs)
    a, b, d = pairs
    keep = d <= radius
    facts |= {"decoded": int((~known).sum()), "skipped": int((~have).sum()), "images": len(ids)}
    return HashScan(radius, ids, views, (a[keep], b[keep], d[keep].astype(np.int64)), facts, structure)


def _known(cached: dict | None, ids: np.ndarray, keys: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Which ids the cache holds views of, for the same bytes and the same stored hashes."""
    if cached is None or not len(cached["ids"]):
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(cached["ids"], ids), len(cached["ids"]) - 1)
    same = (cached["ids"][pos] == ids) & (cached["keys"][pos] == keys)
    return same & (stored_of(cached["views"][pos]) == stored).all(axis=1)


def _decode_new(catalog, options, ids: np.ndarray, workers: int, progress: bool):
    """Views and structure of ``ids`` in that order, and which of them decoded (the others are
    zeros)."""
    out, ok = np.zeros((len(ids), VIEWS), np.int64), np.zeros(len(ids), bool)
    structure = np.full(len(ids), NO_STRUCTURE, np.int64)
    if not len(ids):
        return out, structure, ok
    store = ImageStore(options.images_dir)
    paths = _stored_paths(catalog, ids.tolist())
    items = [(i, store.path(paths[i])) for i in ids.tolist() if i in paths]
    got, views, got_structure, reasons = stored_views(options, items, workers, progress)
    pos = np.searchsorted(ids, got)
    out[pos, :TURNS], structure[pos], ok[pos] = views, got_structure, True
    if not ok.all():
        LOG.warning("%d images left out of hash pairs: %s", int((~ok).sum()), dict(reasons))
    return out, structure, ok


def _stored_paths(catalog: Catalog, ids: list[int]) -> dict[int, str]:
    rows = {}
    for start in range(0, len(ids), 500):
        rows.update((i, r.stored_path) for i, r in catalog.get_many(ids[start : start + 500]).items())
    return rows


def _pairs(ids, views, known, cached, radius):
    """(a, b, distance) within the pairs' radius, and what was searched.

    ``known`` None: every pair anew (``hash_pairs``); else the cached pairs among the known
    images plus ``pairs_touching`` the others, at the cached radius so the cache stays whole.
    """
    if known is None:
        why = "no cached hash pairs" if cached is None else f"radius {radius} above cached {cached['radius']}"
        found = as_arrays(hash_pairs(ids, views, radius))
        return found, {"full": True, "reason": why, "searched": len(ids), "reused_pairs": 0}
    radius = cached["radius"]
    a, b, d = cached["pairs"]
    still = np.isin(a, ids[known]) & np.isin(b, ids[known])
    new = as_arrays(pairs_touching(ids, views, ~known, radius))
    a, b, d = (np.concatenate([old[still], fresh]) for old, fresh in zip((a, b, d), new, strict=True))
    order = np.lexsort((b, a))
    searched, reused = int((~known).sum()), int(still.sum())
    facts = {"full": False, "reason": "cached", "searched": searched, "reused_pairs": reused}
    return (a[order], b[order], d[order]), facts


def _load(catalog: Catalog) -> dict | None:
    with catalog.session() as session:
        row = session.get(HashPairCache, cache_key())
        if row is None:
            return None
        # Each image's row of views carries its structure after them (``HASH_SCHEME``).
        rows = np.frombuffer(row.member_views, np.int64).reshape(-1, VIEWS + 1)
        return {
            "radius": row.radius,
            "ids": np.frombuffer(row.member_ids, np.int64),
            "keys": np.frombuffer(row.member_keys, np.int64),
            "views": rows[:, :VIEWS],
            "structure": rows[:, VIEWS],
            "pairs": (
                np.frombuffer(row.pair_a, np.int64),
                np.frombuffer(row.pair_b, np.int64),
                np.frombuffer(row.pair_distance, np.int8),
            ),
        }


def _save(catalog: Catalog, radius: int, ids, keys, views, structure, pairs) -> None:
    a, b, d = pairs
    rows = np.column_stack([np.asarray(views, np.int64).reshape(-1, VIEWS), np.asarray(structure, np.int64)])
    values = dict(
        scheme=cache_key(),
        radius=int(radius),
        member_ids=np.ascontiguousarray(ids, np.int64).tobytes(),
        member_keys=np.ascontiguousarray(keys, np.int64).tobytes(),
        member_views=np.ascontiguousarray(rows, np.int64).tobytes(),
        pair_a=np.ascontiguousarray(a, np.int64).tobytes(),
        pair_b=np.ascontiguousarray(b, np.int64).tobytes(),
        pair_distance=np.ascontiguousarray(d, np.int8).tobytes(),
        updated_at=datetime.now(timezone.utc),
    )
    with catalog.session() as session:
        # Other schemes go; one upsert for this one, so concurrent reports never fail on its key.
        session.execute(delete(HashPairCache).where(HashPairCache.scheme != values["scheme"]))
        upsert(session, HashPairCache, values, ["scheme"])
