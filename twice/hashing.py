"""64-bit perceptual hashes (DCT pHash), their 8 dihedral variants, and a multi-index lookup.

The hash is pHash: grey, squash to 32x32, 2-D DCT-II, keep the 8x8 lowest frequencies, one bit
per coefficient above their median. Squashing commutes with 90° turns and flips, and the DCT
of a turned or flipped image is a sign/transposition pattern of the original's coefficients,
so all 8 dihedral hashes of a query come from ONE decode and ONE DCT.

Version 2 (``HASH_VERSION``) squashes in float64 with one Lanczos matrix per side, folded into
the DCT matrix, instead of Pillow's 8-bit two-pass resize, and treats coefficients within
``TIE`` of the median as ties (bit 0). Pillow rounds to 8 bits between its horizontal and
vertical pass, so a turned image was not squashed to the turned squash: on near-blank clip art
(light lines on white, AC coefficients near 0) that rounding, not the picture, set up to 16 of
the 64 bits, and rotated copies missed their original. In float the views agree to 1e-12.

Version 3 stores two more hashes per image, its photometric views (``STORED_VIEWS``): the hash
of the image brightened and darkened as augment's ``bright`` and ``dark`` do. Their clipping
destroys structure the query side cannot restore, but the stored side can reproduce it: a
brightened copy's hash is near its original's bright view when far from its plain hash
(openclipart, bright copies as JPEG q90: within 2 bits for 37% plainly, 85% against the bright
view; dark 81% -> 89%). The hash function itself is unchanged from version 2.

Hashes are stored as signed 64-bit integers (SQLite's INTEGER); ``HashIndex`` finds every
stored hash within a Hamming radius of any of the query's variants by multi-index hashing:
the 64 bits are split into 4 bands of 16, and by pigeonhole a hash within radius ``r`` agrees
with the query to within ``r // 4`` bits on at least one band, so probing each band's buckets
with every value within ``r // 4`` bits finds them all without a scan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np
from PIL import Image

from .borders import trim_borders

LOG = logging.getLogger(__name__)

# Stored hashes of another version are not comparable: search and calibration ignore them and
# `twice reindex` recomputes them (``ImageRow.phash_version``).
HASH_VERSION = 4
HASH_SCHEME = f"phash-dct64-dihedral8-v{HASH_VERSION}"  # the name caches key hash views by
HASH_BITS = 64
DCT_SIDE = 32
LOW_SIDE = 8
BANDS = 4
BAND_BITS = HASH_BITS // BANDS
MAX_RADIUS = 4 * BANDS - 1  # 15: at most 3 differing bits per probed band

# Photometric views hashed on the stored side (augment transform specs at their default
# amounts): clipping cannot be undone on a query, so the catalog keeps the original's hash
# after it. Catalog columns ``phash_<view>``; NULL where the view's hash is flat.
STORED_VIEWS = ("bright", "dark")
VIEW_SHIFTS = {"bright": 100, "dark": -50}  # grey levels added: augment's bright and dark defaults
STORED_KINDS = (None, *STORED_VIEWS)  # what each stored hash of an image is; None the plain one
STORED_COLUMNS = tuple(f"phash_{name}" for name in STORED_VIEWS)

# Names say what was done to the query to match the result ("rotate 90" is clockwise, as in
# augment's ``rotate``). Index 0 is the untouched query.
DIHEDRAL = (
    "identity",
    "rotate 90",
    "rotate 180",
    "rotate 270",
    "mirror",
    "flip",
    "transpose",
    "transverse",
)
PIL_DIHEDRAL = {
    "identity": None,
    "rotate 90": Image.Transpose.ROTATE_270,  # PIL turns counter-clockwise
    "rotate 180": Image.Transpose.ROTATE_180,
    "rotate 270": Image.Transpose.ROTATE_90,
    "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
    "flip": Image.Transpose.FLIP_TOP_BOTTOM,
    "transpose": Image.Transpose.TRANSPOSE,
    "transverse": Image.Transpose.TRANSVERSE,
}


# The view that undoes each one (quarter turns swap; flips and transposes undo themselves).
INVERSE = {name: name for name in DIHEDRAL} | {"rotate 90": "rotate 270", "rotate 270": "rotate 90"}


def _dct_matrix(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``."""
    x = np.arange(n)
    rows = np.cos(np.pi * (2 * x[None, :] + 1) * np.arange(keep)[:, None] / (2 * n))
    rows[0] *= 1 / np.sqrt(2)
    return rows * np.sqrt(2 / n)


LANCZOS_LOBES = 3
TIE = 1e-6  # coefficients this close to the median are ties: float noise must not set bits
_CHUNK_ROWS = 1024  # rows of a large image made float at a time
_DCT = _dct_matrix(DCT_SIDE, LOW_SIDE)


def resample_matrix(n_in: int, n_out: int = DCT_SIDE) -> np.ndarray:
    """(n_out, n_in): Lanczos-3 resampling of a line of ``n_in`` pixels to ``n_out``.

    The kernel widens by the shrink factor (antialiasing, as Pillow's LANCZOS does), each row
    sums to 1, and reversing the input reverses the output: mirrored lines squash to mirrors.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} pixels to {n_out}")
    scale = n_in / n_out
    width = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    x = (np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / width
    weights = np.where(np.abs(x) < LANCZOS_LOBES, np.sinc(x) * np.sinc(x / LANCZOS_LOBES), 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


@lru_cache(maxsize=512)
def _projection(n_in: int) -> np.ndarray:
    """(8, n_in): squash a line to 32 pixels, then its 8 lowest DCT frequencies, in one step."""
    matrix = _DCT @ resample_matrix(n_in)
    matrix.flags.writeable = False
    return matrix


_PARITY = np.arange(LOW_SIDE) % 2
# C[v, u]: v the vertical and u the horizontal frequency. Mirroring x negates odd u,
# flipping y negates odd v, transposing the image transposes C; every dihedral map is
# one of these compositions: (transpose first?, sign of odd u, sign of odd v).
_SIGNS_U = 1 - 2 * _PARITY[None, :]
_SIGNS_V = 1 - 2 * _PARITY[:, None]
_DIHEDRAL_OPS = {
    "identity": (False, False, False),
    "rotate 90": (True, True, False),
    "rotate 180": (False, True, True),
    "rotate 270": (True, False, True),
    "mirror": (False, True, False),
    "flip": (False, False, True),
    "transpose": (True, False, False),
    "transverse": (True, True, True),
}


def dihedral_image(image: Image.Image, name: str) -> Image.Image:
    """``image`` turned or flipped as ``name`` says (one of ``DIHEDRAL``)."""
    if name not in PIL_DIHEDRAL:
        raise ValueError(f"unknown dihedral transform {name!r}; expected one of {', '.join(DIHEDRAL)}")
    op = PIL_DIHEDRAL[name]
    return image.copy() if op is None else image.transpose(op)


def dct_coefficients(image: Image.Image) -> np.ndarray:
    """The 8x8 lowest DCT coefficients of the image's grey squashed to 32x32, in float64.

    C[v, u] = (P_h @ grey @ P_w.T)[v, u] with ``_projection`` matrices: the squash and the DCT
    in two products, with no rounding in between. Large images go a block of rows at a time.
    """
    grey = np.asarray(image.convert("L"))
    height, width = grey.shape
    p_h = _projection(height)
    rows = np.zeros((LOW_SIDE, width))
    for start in range(0, height, _CHUNK_ROWS):
        block = grey[start : start + _CHUNK_ROWS].astype(np.float64)
        rows += p_h[:, start : start + _CHUNK_ROWS] @ block
    return rows @ _projection(width).T


def dihedral_coefficients(coeffs: np.ndarray) -> np.ndarray:
    """(8, 8, 8): the coefficients of each ``DIHEDRAL`` view, from the original's only."""
    views = []
    for name in DIHEDRAL:
        transpose, odd_u, odd_v = _DIHEDRAL_OPS[name]
        c = coeffs.T if transpose else coeffs
        if odd_u:
            c = c * _SIGNS_U
        if odd_v:
            c = c * _SIGNS_V
        views.append(c)
    return np.stack(views)


def bits_to_hash(bits: np.ndarray) -> np.ndarray:
    """(..., 8, 8) booleans -> (...) signed int64, the first coefficient in the top bit."""
    packed = np.packbits(bits.reshape(*bits.shape[:-2], HASH_BITS).astype(np.uint8), axis=-1)
    return packed.view(">u8")[..., 0].astype(np.uint64).view(np.int64)


def hash_coefficients(coeffs: np.ndarray) -> np.ndarray:
    """(..., 8, 8) coefficients -> (...) hashes: a bit per coefficient above the median (by > TIE)."""
    flat = coeffs.reshape(*coeffs.shape[:-2], HASH_BITS)
    median = np.median(flat, axis=-1, keepdims=True)
    return bits_to_hash((flat - median > TIE).reshape(coeffs.shape))


def phash(image: Image.Image) -> int:
    """The 64-bit pHash of ``image``'s content (borders trimmed) as a signed integer (what the
    catalog stores)."""
    return content_phash(trim_borders(image))


def content_phash(content: Image.Image) -> int:
    """``phash`` of an image already trimmed to its content (``trim_borders``' output)."""
    return int(hash_coefficients(dct_coefficients(content)))


def dihedral_hashes(image: Image.Image) -> np.ndarray:
    """(8,) int64: the pHash of each ``DIHEDRAL`` view of ``image``'s content, from one DCT
    (trimming turns with the image, so the views are those of the turned image)."""
    return hash_coefficients(dihedral_coefficients(dct_coefficients(trim_borders(image))))


# A coefficient is "strong" when it stands this far from the 64 coefficients' median: one grey
# level of the 32x32 squash (the orthonormal DCT scales a uniform level by the side, 32), above
# what JPEG noise moves. An image with few strong coefficients (a symmetric drawing on white,
# a flat texture) has a hash whose other bits are set by ties and small asymmetries, so unrelated
# images of that kind land a few bits apart (PDQ's "quality" idea, measured on the DCT itself).
STRONG_COEFFICIENT = 1.0 * DCT_SIDE


def structure_of(coeffs: np.ndarray) -> int:
    """How many of the 64 coefficients are strong (``STRONG_COEFFICIENT`` from their median)."""
    flat = np.asarray(coeffs, np.float64).reshape(-1)
    return int(np.sum(np.abs(flat - np.median(flat)) > STRONG_COEFFICIENT))


def hash_structure(image: Image.Image) -> int:
    """``structure_of`` the coefficients ``phash`` hashes: how much a match of this hash says."""
    return structure_of(dct_coefficients(image))


def shifted(image: Image.Image, amount: int) -> Image.Image:
    """``amount`` added to every channel of every pixel, clipped to 0..255 (RGB in, RGB out)."""
    return (image if image.mode == "RGB" else image.convert("RGB")).point(_shift_table(amount))


@lru_cache(maxsize=16)
def _shift_table(amount: int) -> tuple[int, ...]:
    """``Image.point``'s lookup table for ``shifted``: one 256-entry ramp per RGB channel."""
    return tuple(min(255, max(0, level + amount)) for level in range(256)) * 3


def stored_hashes(image: Image.Image, content: Image.Image | None = None) -> tuple[int, ...]:
    """What the catalog stores of ``image``: its pHash, then one per ``STORED_VIEWS`` view.

    ``content`` is ``trim_borders(image)`` where the caller has it already (reindex trims once
    for the hash and the model's tensor). The views are trimmed after their shift: clipping can
    make a near-white margin a border. A view's hash is None when flat (all clipped to white,
    say): it would match anything.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    plain = content_phash(trim_borders(rgb) if content is None else content)
    views = (phash(shifted(rgb, VIEW_SHIFTS[name])) for name in STORED_VIEWS)
    return (plain, *(None if is_flat(h) else h for h in views))


# Hashes with no AC bit: the image has no structure at 32x32 (one flat colour, say). Such a hash
# matches every other one, black and white alike, so it is no evidence for or against.
FLAT_HASHES = frozenset({0, -(2**63)})


def is_flat(value: int | np.integer) -> bool:
    """Whether a hash says nothing: the image it came from has no structure (``FLAT_HASHES``)."""
    return int(value) in FLAT_HASHES


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has it built in; a byte table otherwise)."""
    values = np.asarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_BITS[as_bytes].sum(axis=-1, dtype=np.int64)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between int64 hashes (broadcasting)."""
    xor = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    return popcount(np.atleast_1d(xor).view(np.uint64)).reshape(xor.shape)


def check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"hash radius must be an integer from 0 to {MAX_RADIUS}, got {radius!r}")
    return int(radius)


def _flip_masks(bits: int, max_flips: int) -> np.ndarray:
    """Every ``bits``-bit value with at most ``max_flips`` bits set."""
    masks = [0]
    for flips in range(1, max_flips + 1):
        masks += [sum(1 << b for b in chosen) for chosen in combinations(range(bits), flips)]
    return np.asarray(masks, dtype=np.uint64)


_MASKS = {r: _flip_masks(BAND_BITS, r) for r in range(MAX_RADIUS // BANDS + 1)}


@dataclass(frozen=True)
class HashMatch:
    """A stored image with a hash (plain or photometric view) within the radius of a query view."""

    id: int
    distance: int
    transform: str  # one of DIHEDRAL: what turns the query into the match
    stored: str | None = None  # one of STORED_VIEWS: the match's view that matched; None: its plain hash


class HashIndex:
    """Multi-index hashing over (id, hash, kind) entries: 4 bands of 16 bits, CSR buckets per band.

    ``kinds`` index ``STORED_KINDS`` (0, the plain hash, by default): an image has up to three
    entries, and a match says which one it came from. New hashes go to a small buffer that is
    scanned directly and merged into the buckets when it grows, so adding one image does not
    rebuild the index.
    """

    MERGE_AT = 4096

    def __init__(
        self, ids: Iterable[int] = (), hashes: Iterable[int] = (), kinds: Iterable[int] | None = None
    ) -> None:
        self.ids = np.zeros(0, np.int64)
        self.hashes = np.zeros(0, np.uint64)
        self.kinds = np.zeros(0, np.int8)
        self._extra_ids: list[np.ndarray] = []
        self._extra_hashes: list[np.ndarray] = []
        self._extra_kinds: list[np.ndarray] = []
        self._extra_count = 0
        ids, hashes = np.fromiter(ids, np.int64), np.fromiter(hashes, np.int64)
        self._build(ids, hashes, _kinds(kinds, len(ids)))

    @classmethod
    def of_stored(cls, ids: np.ndarray, stored: np.ndarray) -> HashIndex:
        """The index of ``load_stored_hashes``' (ids, (N, 3) stored hashes)."""
        return cls(*flatten_stored(ids, stored))

    def __len__(self) -> int:
        return len(self.ids) + self._extra_count

    def _build(self, ids: np.ndarray, hashes: np.ndarray, kinds: np.ndarray) -> None:
        if len(ids) != len(hashes):
            raise ValueError(f"{len(ids)} ids for {len(hashes)} hashes")
        self.ids, self.hashes = ids.astype(np.int64), hashes.astype(np.int64).view(np.uint64)
        self.kinds = kinds
        # One CSR table for all bands: band b's bucket v is _order[_offsets[b, v]:_offsets[b, v + 1]].
        orders, offsets = [], []
        for band in range(BANDS):
            keys = self._band(self.hashes, band)
            order = np.argsort(keys, kind="stable")
            orders.append(order)
            offsets.append(np.searchsorted(keys[order], np.arange((1 << BAND_BITS) + 1)) + band * len(ids))
        self._order = np.concatenate(orders)
        self._offsets = np.stack(offsets)

    @staticmethod
    def _band(hashes: np.ndarray, band: int) -> np.ndarray:
        return (hashes >> np.uint64(band * BAND_BITS)) & np.uint64((1 << BAND_BITS) - 1)

    def add(self, ids: Iterable[int], hashes: Iterable[int], kinds: Iterable[int] | None = None) -> None:
        """Add (id, hash, kind) entries; an id is found under each of its hashes."""
        ids, hashes = np.fromiter(ids, np.int64), np.fromiter(hashes, np.int64)
        if len(ids) != len(hashes):
            raise ValueError(f"{len(ids)} ids for {len(hashes)} hashes")
        kinds = _kinds(kinds, len(ids))
        if not len(ids):
            return
        self._extra_ids.append(ids)
        self._extra_hashes.append(hashes.view(np.uint64))
        self._extra_kinds.append(kinds)
        self._extra_count += len(ids)
        if self._extra_count >= self.MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        ids = np.concatenate([self.ids, *self._extra_ids])
        hashes = np.concatenate([self.hashes, *self._extra_hashes]).view(np.int64)
        kinds = np.concatenate([self.kinds, *self._extra_kinds])
        self._extra_ids, self._extra_hashes, self._extra_kinds, self._extra_count = [], [], [], 0
        self._build(ids, hashes, kinds)

    def _positions(self, query: np.uint64, masks: np.ndarray) -> np.ndarray:
        """Positions in ``self.ids`` sharing a band (within the masks' bits) with ``query``.

        A position can appear once per band it shares; repeats cost less than sorting them out.
        """
        bands = np.arange(BANDS)[:, None]
        probes = (self._band(query, bands) ^ masks[None, :]).astype(np.int64)
        starts = self._offsets[bands, probes].ravel()
        lengths = self._offsets[bands, probes + 1].ravel() - starts
        total = int(lengths.sum())
        if not total:
            return np.zeros(0, np.int64)
        # Concatenated ranges [start, end) without a Python loop over buckets.
        shift = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return self._order[shift + np.arange(total)]

    def search(self, queries: np.ndarray | Iterable[int], radius: int) -> list[HashMatch]:
        """Stored hashes within ``radius`` of any query view, nearest first, one per id.

        ``queries`` are the 8 ``DIHEDRAL`` views of the query (``dihedral_hashes``); a shorter
        array is read in ``DIHEDRAL`` order. Ties in distance prefer the plain stored hash, then
        the earlier query view.
        """
        radius = check_radius(radius)
        queries = np.asarray(list(queries) if not isinstance(queries, np.ndarray) else queries, np.int64)
        queries = queries.reshape(-1).view(np.uint64)
        if len(queries) > len(DIHEDRAL):
            raise ValueError(f"at most {len(DIHEDRAL)} query views, got {len(queries)}")
        masks = _MASKS[radius // BANDS]
        extra_ids = np.concatenate(self._extra_ids) if self._extra_ids else np.zeros(0, np.int64)
        extra_hashes = np.concatenate(self._extra_hashes) if self._extra_hashes else np.zeros(0, np.uint64)
        extra_kinds = np.concatenate(self._extra_kinds) if self._extra_kinds else np.zeros(0, np.int8)
        found_ids, found_d, found_view, found_kind = [], [], [], []
        # Each view is probed and compared on its own: a hash within the radius of view v is
        # found through v's bands, so the minimum over views is exact.
        for view, query in enumerate(queries):
            positions = self._positions(query, masks) if len(self.ids) else np.zeros(0, np.int64)
            ids = np.concatenate([self.ids[positions], extra_ids])
            d = popcount(np.concatenate([self.hashes[positions], extra_hashes]) ^ query)
            keep = d <= radius
            found_ids.append(ids[keep])
            found_d.append(d[keep])
            found_view.append(np.full(int(keep.sum()), view))
            found_kind.append(np.concatenate([self.kinds[positions], extra_kinds])[keep])
        ids, best, views = np.concatenate(found_ids), np.concatenate(found_d), np.concatenate(found_view)
        kinds = np.concatenate(found_kind)
        order = np.lexsort((views, kinds, best))
        matches, seen = [], set()
        for i in order.tolist():
            image_id = int(ids[i])
            if image_id not in seen:
                seen.add(image_id)
                matches.append(
                    HashMatch(image_id, int(best[i]), DIHEDRAL[int(views[i])], STORED_KINDS[int(kinds[i])])
                )
        return matches

    def brute_force(self, queries: np.ndarray, radius: int) -> dict[int, int]:
        """{id: best distance} by scanning everything; the oracle for tests."""
        ids = np.concatenate([self.ids, *self._extra_ids])
        hashes = np.concatenate([self.hashes, *self._extra_hashes])
        q = np.asarray(queries, np.int64).reshape(-1).view(np.uint64)
        best = popcount(hashes[:, None] ^ q[None, :]).min(axis=1) if len(ids) else []
        out: dict[int, int] = {}
        for image_id, d in zip(ids.tolist(), np.asarray(best).tolist(), strict=True):
            if d <= radius:
                out[image_id] = min(d, out.get(image_id, d))
        return out


def _kinds(kinds: Iterable[int] | None, n: int) -> np.ndarray:
    out = np.zeros(n, np.int8) if kinds is None else np.fromiter(kinds, np.int8)
    if len(out) != n or (n and not 0 <= out.min() <= out.max() < len(STORED_KINDS)):
        raise ValueError(f"kinds must be {n} indexes into {STORED_KINDS}, got {out.tolist()[:8]}")
    return out


def stored_present(stored: np.ndarray) -> np.ndarray:
    """Which of (..., 3) stored hashes say something: the plain one always, a photometric view
    unless flat (NULL in the catalog, 0 in arrays)."""
    stored = np.asarray(stored, np.int64)
    present = ~np.isin(stored, list(FLAT_HASHES))
    present[..., 0] = True
    return present


def flatten_stored(ids: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, hashes, kinds) entries for ``HashIndex`` from (N, 3) stored hashes, absent views left out."""
    ids = np.asarray(ids, np.int64)
    stored = np.asarray(stored, np.int64).reshape(len(ids), len(STORED_KINDS))  # also when none is hashed
    present = stored_present(stored)
    rows, kinds = np.nonzero(present)
    return ids[rows], stored[rows, kinds], kinds.astype(np.int8)


def view_distances(queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(n,) the best distance of each row's query views (n, v) to its stored hashes (n, s).

    What search sees of a (query, stored image) pair: every dihedral view of the query against
    the plain hash and each photometric view present (``stored_present``).
    """
    queries = np.atleast_2d(np.asarray(queries, np.int64))
    stored = np.atleast_2d(np.asarray(stored, np.int64))
    d = hamming(queries[:, :, None], stored[:, None, :])
    d = np.where(stored_present(stored)[:, None, :], d, HASH_BITS + 1)
    return d.min(axis=(1, 2))


def nearest_match(
    queries: np.ndarray, image_id: int, stored: np.ndarray | Iterable[int | None] | int
) -> HashMatch:
    """The (query view, stored hash) nearest of one stored image; ties: plain hash, earlier view.

    ``stored`` is its plain hash, or (plain, *photometric views) with None or 0 for absent ones.
    """
    stored = np.asarray([0 if h is None else h for h in np.atleast_1d(stored).tolist()], np.int64)
    d = hamming(np.asarray(queries, np.int64)[:, None], stored[None, :])
    d = np.where(stored_present(stored)[None, :], d, HASH_BITS + 1)
    kind, view = divmod(int(np.argmin(d.T)), d.shape[0])  # kind-major: the plain hash wins ties
    return HashMatch(image_id, int(d[view, kind]), DIHEDRAL[view], STORED_KINDS[kind])


def stored_of(views: np.ndarray) -> np.ndarray:
    """(N, 3) stored hashes of report views: column 0 (the plain stored hash) and the stored
    photometric views after the 8 dihedral ones (absent: 0)."""
    views = np.asarray(views, np.int64)
    out = np.zeros((len(views), len(STORED_KINDS)), np.int64)
    out[:, 0] = views[:, 0]
    extra = views[:, len(DIHEDRAL) :]
    out[:, 1 : 1 + extra.shape[1]] = extra
    return out


def hash_pairs(ids: np.ndarray, views: np.ndarray, radius: int) -> dict[tuple[int, int], HashMatch]:
    """Every pair of images within ``radius`` under some dihedral view: {(a, b): match}, a < b.

    ``views`` is (N, 8): ``dihedral_hashes`` of each image in ``ids`` (identity view first),
    so turned and flipped copies pair up too; or (N, 10) with each image's stored photometric
    views after them (``STORED_VIEWS``; 0 where absent), so a brightened copy pairs with its
    original's bright view. ``match.id`` is b and ``match.transform`` turns image a into b;
    ``match.stored`` names the photometric view of either side that matched. The report's hash
    evidence: pairs that a CNN threshold alone would miss.
    """
    ids, views = np.asarray(ids, np.int64), np.asarray(views, np.int64)
    widths = (len(DIHEDRAL), len(DIHEDRAL) + len(STORED_VIEWS))
    if views.ndim != 2 or views.shape[0] != len(ids) or views.shape[1] not in widths:
        raise ValueError(
            f"views must have shape ({len(ids)}, {widths[0]}), got {views.shape}"
            f" (or ({len(ids)}, {widths[1]}) with the stored photometric views)"
        )
    index = HashIndex.of_stored(ids, stored_of(views))
    pairs: dict[tuple[int, int], HashMatch] = {}
    for a, row in zip(ids.tolist(), views[:, : len(DIHEDRAL)], strict=True):
        for match in index.search(row, radius):
            key = (min(a, match.id), max(a, match.id))
            if match.id != a and (key not in pairs or match.distance < pairs[key].distance):
                if a < match.id:
                    pairs[key] = match
                else:  # seen from b's side: the inverse turn takes a to b
                    pairs[key] = HashMatch(a, match.distance, INVERSE[match.transform], match.stored)
    return pairs


def row_hashes(row) -> tuple[int | None, ...]:
    """A catalog row's stored hashes: plain, then each ``STORED_VIEWS`` view (None: absent)."""
    return (row.phash, *(getattr(row, name) for name in STORED_COLUMNS))
