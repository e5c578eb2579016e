"""The CNN score of a report pair as search scores it: over the query's 8 turns and flips.

A single-view model (``invariance`` none, the shipped one) is not invariant to quarter turns and
flips, so search embeds a query's 8 dihedral views and keeps each candidate's best score
(``search.engine.default_tta``). The index holds one view of each image: the stored vectors of an
image and its turned copy score 0.1-0.3, where search scores the copy 0.9 and more. A report
pair scores as search would score its later image (the member) as a query against the other's
stored vector: the member's views are embedded from its stored file, once per image per run.

An image the report searched by its views as search searches a query (a loner,
``search.report_loners``) scores every pair over its 8 views, and a loner those left without a
duplicate, searched again as a crop as search searches such a query (``search.parts``), over its
part views too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from twice.imageio import ImageError
from twice.indexer import Catalog

from .engine import default_tta, dihedral_vectors, part_vectors
from .report_hashes import decode_stored

LOG = logging.getLogger(__name__)

CHUNK = 500  # ids per catalog lookup


class ViewScorer:
    """Best score of an image's 8 dihedral views against another image's stored vector.

    ``embedder`` builds the model on first use (a report whose pairs all stand clear of the
    cuts never loads it); views of a model version other than the index's are never used.
    """

    def __init__(self, options, catalog: Catalog, embedder: Callable[[], object], model_version: str) -> None:
        self.options, self.catalog = options, catalog
        self._make_embedder, self.model_version = embedder, model_version
        self._embedder = None
        self._usable: bool | None = None
        self.views: dict[int, np.ndarray | None] = {}  # the 8 dihedral views' vectors
        self.parts: dict[int, np.ndarray | None] = {}  # the part views' vectors, where searched
        self.searched: set[int] = set()  # images searched by their views: all their pairs score so
        self.as_crops: set[int] = set()  # ... and by their part views: their pairs score by those too

    @property
    def embedded(self) -> int:
        """Images whose 8 views this run embedded."""
        return sum(views is not None for views in self.views.values())

    @property
    def usable(self) -> bool:
        """Whether the model is this index's and single-view (so search turns its queries)."""
        if self._usable is None:
            self._embedder = self._make_embedder()
            same = self._embedder.version == self.model_version
            if not same:
                LOG.warning(
                    "report scores stored vectors only: the model %s is not the index's %s",
                    self._embedder.version,
                    self.model_version,
                )
            self._usable = same and default_tta(self._embedder) == "d4"
        return self._usable

    def best(self, stored_vector: np.ndarray, query: int) -> float | None:
        """The best score of ``query``'s views (its part views too once it was searched as a
        crop) against ``stored_vector`` (None: not usable, or the query's file could not be read)."""
        views = self.query_views(query, query in self.as_crops)
        return None if views is None else float(np.max(views @ stored_vector))

    def query_views(self, image_id: int, parts: bool = False) -> np.ndarray | None:
        """(8, D): the vectors search would search for the image as a query, its 8 dihedral views;
        with ``parts``, its part views after them (None: not usable, or the file could not be
        read)."""
        if not self.usable:
            return None
        if image_id not in self.views:
            self.views[image_id] = self._embed(image_id, dihedral_vectors)
        views = self.views[image_id]
        if not parts or views is None:
            return views
        more = self.part_views(image_id)
        return views if more is None else np.concatenate([views, more])

    def part_views(self, image_id: int) -> np.ndarray | None:
        """(len(PART_VIEWS), D): the vectors search adds for a query that its 8 views found no
        duplicate for, the image as a part of a larger picture (None: not usable, or unreadable)."""
        if not self.usable:
            return None
        if image_id not in self.parts:
            self.parts[image_id] = self._embed(image_id, part_vectors)
        return self.parts[image_id]

    def _embed(self, image_id: int, vectors_of) -> np.ndarray | None:
        row = self.catalog.get(image_id)
        if row is None:
            return None
        path = Path(self.options.images_dir) / row.stored_path
        try:
            decoded = decode_stored(path, self.options, self._embedder.draft_side)
        except (OSError, ImageError) as exc:
            LOG.warning("no query views of #%d (%s): %s", image_id, path, exc)
            return None
        return vectors_of(self._embedder, decoded.image)


TURN_ANGLE = 45.0  # degrees: a fitted edit turned this far or more shows a quarter turn or a half


def shows_a_turn(transform: str | None, checked) -> bool:
    """Whether the hash matched under a turn or flip, or verification fitted a turn or a mirror:
    the pairs whose stored vectors cannot score as search scores them."""
    if transform not in (None, "identity"):
        return True
    geometry = None if checked is None else checked.geometry
    return geometry is not None and (geometry.mirrored or abs(geometry.angle) >= TURN_ANGLE)


def turned_score(
    views: ViewScorer | None,
    thresholds,
    stored_vector: np.ndarray,
    query: int,
    score: float,
    transform: str | None,
    checked,
) -> float:
    """The pair's score as search gives it (the best of the query's views) where a turn shows, or
    the query was searched as search searches it, and the stored vectors' score is under the
    duplicate cut; else that score."""
    if views is None or score >= thresholds.duplicate:
        return score
    if not (shows_a_turn(transform, checked) or query in views.searched):
        return score
    best = views.best(stored_vector, query)
    return score if best is None else max(score, best)
