"""Calibration judged as search judges: pairs verified by local features before the fit."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from twice.augment.variants import augment_catalog
from twice.indexer import Catalog, Indexer, load_vectors_for_search, reindex
from twice.search.calibrate import Pairs, collect_pairs, fit_thresholds
from twice.search.calibrate_verify import ALWAYS, NEVER, verification_counts
from twice.search.verdicts import Thresholds

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


@pytest.fixture
def photo_catalog(tmp_path, options, embedder):
    """Six photographs and a quarter turn and a 50 % crop of each, as known variants."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.resize((320, 240), Image.Resampling.LANCZOS).save(folder / f"{name}.png")
    reindex([folder], options, embedder, progress=False)
    indexer = Indexer(options, embedder.version, embedder.dim)
    augment_catalog(indexer, ["rotate", "cropbox:0.5:1.0:0.1:0.2"], progress=False)
    indexer.close()
    reindex([], options, embedder, progress=False)
    catalog = Catalog(options.catalog_url)
    yield catalog, load_vectors_for_search(options, embedder.version, embedder.dim)
    catalog.close()


def test_verification_makes_copies_and_refuses_lookalikes_before_the_fit(photo_catalog, options):
    catalog, vectors = photo_catalog
    plain = collect_pairs(catalog, vectors, options, progress=False)
    judged = collect_pairs(catalog, vectors, options, progress=False, thresholds=Thresholds())
    assert plain.rule_cnn is None and verification_counts(plain) is None
    assert (judged.labels == plain.labels).all() and np.allclose(judged.cnn, plain.cnn)
    # Random weights score different photographs alike: the CNN alone would call them
    # duplicates; verification finds no shared geometry and takes that away.
    negatives = ~judged.labels
    assert (plain.cnn[negatives] >= Thresholds().duplicate).any()
    assert (judged.rule_cnn[negatives] < ALWAYS).all()  # no different photograph verified
    assert (judged.rule_cnn[negatives] == NEVER).mean() > 0.5
    # The crops and quarter turns are verified: duplicates whatever the cuts.
    crops = [i for i, t in enumerate(judged.transforms) if t and t.startswith("cropbox")]
    assert len(crops) == len(PHOTOS)
    assert (judged.rule_cnn[crops] == ALWAYS).all()
    counts = verification_counts(judged)
    assert counts["verified_pairs"] >= len(PHOTOS) and counts["verified_non_pairs"] == 0
    assert judged.verified_with == Thresholds().similar


def test_pairs_verification_makes_duplicates_are_left_out_of_the_fit_and_counted_in():
    rng = np.random.default_rng(0)
    n_pos, n_neg = 200, 2000
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    cnn = np.r_[rng.uniform(0.6, 1.0, n_pos), rng.uniform(0.0, 0.9, n_neg)]
    dist = np.full(len(labels), 65)
    rule_cnn = cnn.copy()
    rule_cnn[:100] = ALWAYS  # half the copies verified
    rule_cnn[n_pos : n_pos + 20] = ALWAYS  # 20 look-alikes wrongly verified: no cut helps
    plain = fit_thresholds(labels, cnn, dist, 0.99)
    judged = fit_thresholds(labels, cnn, dist, 0.99, rule=(rule_cnn, dist, None))
    point = judged.duplicate
    fired = (rule_cnn >= point.cnn_min) | (rule_cnn >= ALWAYS)
    assert point.true_positives == int((fired & labels).sum())
    assert point.false_positives == int((fired & ~labels).sum())
    assert point.target_met and point.precision < 0.99  # the 20 are counted, not fitted
    open_ = rule_cnn < ALWAYS
    assert ((rule_cnn >= point.cnn_min) & open_ & labels).sum() / (
        ((rule_cnn >= point.cnn_min) & open_).sum()
    ) >= 0.99
    assert point.recall > plain.duplicate.recall


def test_the_similar_cut_stays_where_verification_judged():
    labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    cnn = np.r_[np.linspace(0.5, 1.0, 50), np.linspace(0.3, 0.8, 50)]
    dist = np.full(100, 65)
    free = fit_thresholds(labels, cnn, dist, 0.99, 0.6)
    held = fit_thresholds(labels, cnn, dist, 0.99, 0.6, similar_floor=0.7)
    assert free.duplicate.cnn_min > 0.8 and free.duplicate == held.duplicate
    assert free.similar.cnn_min < 0.7 and held.similar.cnn_min == pytest.approx(0.7)
    assert held.similar.recall == pytest.approx(np.mean(cnn[labels] >= 0.7))


def test_pairs_carry_the_rule_evidence_through_a_merge():
    from twice.search.calibrate import one_per_family

    pairs = Pairs(
        np.array([True, False, False]), np.array([0.9, 0.8, 0.7]), np.array([3, 65, 2]),
        ["rotate", None, None],
        margin=np.array([0.1, 0.2, 0.3]), rule_cnn=np.array([ALWAYS, NEVER, 0.7]),
        rule_dist=np.array([3, 65, 65]), rule_margin=np.array([ALWAYS, NEVER, 0.3]), verified_with=0.7,
    )  # fmt: skip
    merged = one_per_family(pairs, np.array([-1, 0, 0]))
    assert merged.rule_cnn.tolist() == [ALWAYS, 0.7] and merged.rule_dist.tolist() == [3, 65]
    assert merged.verified_with == 0.7
