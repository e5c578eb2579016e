"""Thresholds for ``bench quality`` fitted the way ``twice calibrate`` fits them, on images the
benchmark never queries (``twice bench quality --calibrate``).

The distractors (indexed, never queried) get one draw of each seen edit family as known
variants in a separate data directory (``twice augment``, then ``twice reindex``);
``search.calibrate`` scores those pairs and hard non-pairs and fits the duplicate and similar
rules and the evidence weights. The measured queries (copies of the originals) and the
held-out families play no part, so the precision the benchmark reports is what a calibrated
deployment would see on new images and edits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twice.augment import augment_catalog
from twice.indexer import Catalog, Indexer, VectorIndex, load_vectors_for_search, reindex
from twice.search.calibrate import (
    DEFAULT_PRECISION,
    NO_HASH,
    Calibration,
    OperatingPoint,
    collect_pairs,
    fit_pairs,
    fit_rule,
)
from twice.search.verdicts import HASH_OFF, thresholds_for

from .sources import CALIBRATION_STREAM, FIXED, SEEN, EditRow, row_rng

LOG = logging.getLogger(__name__)


@dataclass
class BenchCalibration:
    """The fitted rules, the CNN-alone rule from the same pairs, and what they were fitted on."""

    calibration: Calibration
    cnn_alone: OperatingPoint
    images: int  # distractors that got variants
    transforms: list[str]

    def summary(self) -> dict:
        """What the benchmark's payload keeps of it."""
        fit, pairs = self.calibration.fit, self.calibration.pairs
        return {
            "images": self.images,
            "transforms": self.transforms,
            "positives": int(pairs.labels.sum()),
            "negatives": int((~pairs.labels).sum()),
            "duplicate": fit.duplicate.to_dict(),
            "similar": fit.similar.to_dict(),
            "cnn_alone": self.cnn_alone.to_dict(),
            "weights": fit.weights.to_dict(),
        }


def calibration_transforms(rows: Sequence[EditRow], seed: int) -> list[str]:
    """One draw of each seen family (and each fixed spec), as the specs ``twice augment``
    stores: held-out families stay unseen, and combinations (several specs) are no variant."""
    specs = []
    for row in rows:
        if row.group not in (SEEN, FIXED):
            continue
        drawn = row.draw(row_rng(row, seed, 0, CALIBRATION_STREAM))
        if len(drawn) == 1:
            specs.append(drawn[0].canonical)
    if not specs:
        raise ValueError(f"no edit to calibrate on among {[row.name for row in rows]}")
    return list(dict.fromkeys(specs))


def calibrate_on_distractors(
    distractors: list[Path],
    transforms: list[str],
    options,
    embedder,
    workdir: Path,
    precision: float = DEFAULT_PRECISION,
    seed: int = 0,
    progress: bool = False,
) -> BenchCalibration:
    """Index ``distractors`` and their ``transforms`` under ``workdir`` and fit the thresholds."""
    if not distractors:
        raise ValueError("calibration needs at least one distractor image; got none")
    options = options.with_overrides(data_dir=workdir)
    reindex(distractors, options, embedder, progress=progress)
    indexer = Indexer(options, embedder.version, embedder.dim)
    try:
        augment_catalog(indexer, transforms, progress=progress)
    finally:
        indexer.close()
    reindex([], options, embedder, progress=progress)
    catalog = Catalog(options.catalog_url)
    try:
        header = VectorIndex.read_header(Path(options.index_path))
        vectors = load_vectors_for_search(options, header["model_version"], header["dim"])
        judged = thresholds_for(catalog, embedder.version, embedder.shipped_thresholds)
        pairs = collect_pairs(catalog, vectors, options, seed=seed, progress=progress, thresholds=judged)
    finally:
        catalog.close()
    fit = fit_pairs(pairs, precision)
    no_hash = np.full(len(pairs), NO_HASH, np.int64)
    cnn_alone = fit_rule(pairs.labels, pairs.cnn, no_hash, precision, max_radius=HASH_OFF)
    calibration = Calibration(embedder.version, fit, pairs, None, stored=False)
    LOG.info("bench calibration: %s", "; ".join(calibration.lines()[:3]))
    return BenchCalibration(calibration, cnn_alone, len(distractors), list(transforms))


def store_thresholds(options, result: BenchCalibration) -> None:
    """Store the fitted thresholds with the model version in the catalog under ``options``."""
    thresholds = result.calibration.fit.thresholds()
    catalog = Catalog(options.catalog_url)
    try:
        catalog.set_thresholds(
            result.calibration.model_version,
            thresholds.duplicate,
            thresholds.similar,
            "calibrated",
            result.calibration.details(),
        )
    finally:
        catalog.close()
