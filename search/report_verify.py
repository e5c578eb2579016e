"""Local-feature verification of report pairs, as search verifies a query against a candidate.

A report has no query: for a pair it verifies the later image (``query``) against the other
(``stored``), and for a group member the member against the group's original, so that the
fitted edit reads "how the original became this copy". Features come from the stored images,
decoded as search decodes a stored candidate (``search.verify.MAX_SIDE``), once per image per
report run (kept in a ``FeatureCache``); results are kept per (stored, query) for the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from twice.imageio import ImageError, decode_image, read_file_bytes
from twice.indexer import Catalog

from .verify import MAX_SIDE, FeatureCache, FeatureExtractor, Features, Verification, verify

LOG = logging.getLogger(__name__)

FEATURE_CACHE = 4096  # images' features kept in one run (~21 KB each, twice with the mirror)
CHUNK = 500  # ids per catalog lookup


class PairVerifier:
    """Verifies pairs of catalogued images by their stored files, caching within one run."""

    def __init__(self, options, catalog: Catalog, capacity: int = FEATURE_CACHE) -> None:
        self.options = options
        self.catalog = catalog
        self.extractor = FeatureExtractor()
        self.features = FeatureCache(capacity)
        self.results: dict[tuple[int, int], Verification | None] = {}
        self._paths: dict[int, str] = {}
        self._unreadable: set[int] = set()

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

    def ran(self, a: int, b: int) -> Verification | None:
        """The pair's verification where it ran this run, either way round (None: it did not)."""
        return self.results.get((a, b)) or self.results.get((b, a))

    def keeps_frame(self, a: int, b: int) -> bool:
        """Whether the pair's verification (where it ran) fitted the whole picture onto the whole
        picture: a similarity that neither crops nor adds borders nor tilts off the quarter turns
        (colour, compression, resizing, quarter turns and mirrors keep the frame)."""
        checked = self.ran(a, b)
        return checked is not None and checked.verified and not checked.warped and not checked.reframed

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

    def image_features(self, image_id: int) -> tuple[Features, Features] | None:
        """(features, mirror image's features) of a stored image; None when it cannot be read."""
        if image_id in self._unreadable:
            return None
        got = self.features.get(image_id, lambda: self._compute(image_id))
        if got is None:
            self._unreadable.add(image_id)
        return got

    def _compute(self, image_id: int) -> tuple[Features, Features] | None:
        if image_id not in self._paths:
            self.prefetch([image_id])
        if image_id not in self._paths:
            LOG.warning("cannot verify against #%d: no catalog row", image_id)
            return None
        path = Path(self.options.images_dir) / self._paths[image_id]
        try:
            data = read_file_bytes(path, self.options.max_image_bytes)
            image = decode_image(
                data, str(path), self.options.max_image_bytes, self.options.max_image_pixels, MAX_SIDE
            )
        except (OSError, ImageError) as exc:
            LOG.warning("cannot verify against #%d (%s): %s", image_id, path, exc)
            return None
        return self.extractor.both(image.image, (image.width, image.height))
