"""Local-feature verification of report pairs, as search verifies a query against a candidate.

A report has no query: for a pair it verifies the later image (``query``) against the other
(``stored``), and for a group member the member against the group's original, so that the
fitted edit reads "how the original became this copy". Features come from the stored images,
decoded as search decodes a stored candidate (``search.verify.MAX_SIDE``), once per image per
report run (kept in a ``FeatureCache``); results are kept per (stored, query) for the run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from twice.imageio import ImageError, decode_image, read_file_bytes
from twice.indexer import Catalog

from .verify import (
    MAX_SIDE,
    RETRY_CONTRAST,
    FeatureCache,
    FeatureExtractor,
    Features,
    Verification,
    second_look,
    verify,
)

LOG = logging.getLogger(__name__)

# An image larger than this is not decoded to test it for an enlargement (``PairVerifier.enlarged``).
ENLARGEMENT_PIXELS = 4_000_000
ENLARGED_LOSS = 0.5
RESAMPLE = Image.Resampling.LANCZOS
FEATURE_CACHE = 4096  # images' features kept in one run (~21 KB each, twice with the mirror)
CHUNK = 500  # ids per catalog lookup


def is_enlargement(larger: Image.Image, smaller: Image.Image) -> bool:
    """Whether ``larger`` holds no detail finer than ``smaller``'s size could: brought down to
    ``smaller``'s area and back up it loses less than ``ENLARGED_LOSS`` of what ``smaller`` loses
    brought down by the same factor and back (both grey). Measured on the upscaled and downscaled
    copies of bench report-quality, seeds 0 and 1: 13 copies enlarged 1.06-1.5x lost 0.28-0.70 as
    much as their original (10 under 0.5; the 3 over it enlarged 1.06-1.15x), and the originals
    of 8 copies reduced 0.33-0.94x lost 0.57-1.44 as much as the copy."""
    factor = math.sqrt((smaller.width * smaller.height) / (larger.width * larger.height))
    if factor >= 1.0:
        return False
    lost = round_trip_loss(smaller, factor)
    return lost > 0 and round_trip_loss(larger, factor) < ENLARGED_LOSS * lost


def round_trip_loss(image: Image.Image, factor: float) -> float:
    """RMS difference between a grey ``image`` and itself resized by ``factor`` and back."""
    width, height = image.size
    down = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), RESAMPLE)
    back = np.asarray(down.resize((width, height), RESAMPLE), np.float32)
    return float(np.sqrt(np.mean((np.asarray(image, np.float32) - back) ** 2)))


class PairVerifier:
    """Verifies pairs of catalogued images by their stored files, caching within one run."""

    def __init__(self, options, catalog: Catalog, capacity: int = FEATURE_CACHE) -> None:
        self.options = options
        self.catalog = catalog
        self.extractor = FeatureExtractor()
        self.features = FeatureCache(capacity)
        self.second_extractor = FeatureExtractor(contrast=RETRY_CONTRAST)
        self.second_features = FeatureCache(max(1, capacity // 4))
        self.results: dict[tuple[int, int], Verification | None] = {}
        self._paths: dict[int, str] = {}
        self._unreadable: set[int] = set()
        self._enlarged: dict[tuple[int, int], bool] = {}

    def __call__(self, stored: int, query: int) -> Verification | None:
        """The query image's fit onto the stored one (None: a file could not be read)."""
        key = (stored, query)
        if key not in self.results:
            got_stored, got_query = self.image_features(stored), self.image_features(query)
            checked = None
            if got_stored is not None and got_query is not None:
                checked = verify(got_query[0], got_stored[0], got_query[1])
            self.results[key] = checked
        return self.results[key]

    def second_look(self, stored: int, query: int) -> Verification | None:
        """The pair verified again at search's lower contrast threshold where the first look did
        not verify (``search.verify.second_look``), as search looks again at its first candidate
        (a pair's image, queried, finds the other first); kept as the pair's result."""
        first = self(stored, query)
        if first is None or first.verified:
            return first
        got_stored, got_query = self.image_features(stored, True), self.image_features(query, True)
        if got_stored is not None and got_query is not None:
            self.results[(stored, query)] = second_look(
                first, verify(got_query[0], got_stored[0], got_query[1])
            )
        return self.results[(stored, query)]

    def ran(self, a: int, b: int) -> Verification | None:
        """The pair's verification where it ran this run, either way round (None: it did not)."""
        return self.results.get((a, b)) or self.results.get((b, a))

    def keeps_frame(self, a: int, b: int) -> bool:
        """Whether the pair's verification (where it ran) fitted the whole picture onto the whole
        picture: a similarity that neither crops nor adds borders nor tilts off the quarter turns
        (colour, compression, resizing, quarter turns and mirrors keep the frame)."""
        checked = self.ran(a, b)
        return checked is not None and checked.verified and not checked.warped and not checked.reframed

    def enlarged(self, larger: int, smaller: int) -> bool:
        """Whether ``larger`` is ``smaller`` enlarged (``is_enlargement`` on their stored files,
        decoded at full size; False where a file cannot be read or is too large to test)."""
        key = (larger, smaller)
        if key not in self._enlarged:
            pictures = self.full_grey(larger), self.full_grey(smaller)
            self._enlarged[key] = None not in pictures and is_enlargement(*pictures)
        return self._enlarged[key]

    def full_grey(self, image_id: int) -> Image.Image | None:
        """The stored image at full size, in grey (None: unreadable, or over ``ENLARGEMENT_PIXELS``)."""
        path = self.path(image_id)
        if path is None:
            return None
        try:
            data = read_file_bytes(path, self.options.max_image_bytes)
            decoded = decode_image(data, str(path), self.options.max_image_bytes, ENLARGEMENT_PIXELS)
        except (OSError, ImageError) as exc:
            LOG.info("no enlargement test of #%d (%s): %s", image_id, path, exc)
            return None
        return decoded.image.convert("L")

    def path(self, image_id: int) -> Path | None:
        """The stored file of ``image_id`` (None: no catalog row)."""
        if image_id not in self._paths:
            self.prefetch([image_id])
        if image_id not in self._paths:
            return None
        return Path(self.options.images_dir) / self._paths[image_id]

    def grey(self, stored: int, query: int) -> bool:
        """Whether the query is grey and the stored image in colour (the edit made it grey)."""
        got_stored, got_query = self.image_features(stored), self.image_features(query)
        if got_stored is None or got_query is None:
            return False
        return got_query[0].grey and not got_stored[0].grey

    def prefetch(self, ids) -> None:
        """Look up the stored paths of ``ids`` in a few queries rather than one per image."""
        wanted = sorted(set(ids) - set(self._paths))
        for start in range(0, len(wanted), CHUNK):
            rows = self.catalog.get_many(wanted[start : start + CHUNK])
            self._paths.update((i, row.stored_path) for i, row in rows.items())

    @property
    def runs(self) -> int:
        return sum(checked is not None for checked in self.results.values())

    def image_features(self, image_id: int, second: bool = False) -> tuple[Features, Features] | None:
        """(features, mirror image's features) of a stored image, at the second look's contrast
        where ``second``; None when it cannot be read."""
        if image_id in self._unreadable:
            return None
        cache, extractor = (
            (self.second_features, self.second_extractor) if second else (self.features, self.extractor)
        )
        got = cache.get(image_id, lambda: self._compute(image_id, extractor))
        if got is None:
            self._unreadable.add(image_id)
        return got

    def _compute(self, image_id: int, extractor: FeatureExtractor) -> tuple[Features, Features] | None:
        path = self.path(image_id)
        if path is None:
            LOG.warning("cannot verify against #%d: no catalog row", image_id)
            return None
        try:
            data = read_file_bytes(path, self.options.max_image_bytes)
            image = decode_image(
                data, str(path), self.options.max_image_bytes, self.options.max_image_pixels, MAX_SIDE
            )
        except (OSError, ImageError) as exc:
            LOG.warning("cannot verify against #%d (%s): %s", image_id, path, exc)
            return None
        return extractor.both(image.image, (image.width, image.height))
