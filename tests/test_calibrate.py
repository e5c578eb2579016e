"""Calibration: planted score distributions, a brute-force oracle, the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import brentq
from scipy.stats import norm

from imagegen import make_image, pale_art
from twice.augment import apply_transform
from twice.augment.variants import augment_catalog
from twice.cli import main
from twice.hashing import MAX_RADIUS, dihedral_hashes, hamming, phash
from twice.indexer import Catalog, Indexer, load_vectors_for_search, reindex
from twice.search import SearchEngine, thresholds_for
from twice.search.calibrate import (
    NO_HASH,
    PSEUDO_COUNT,
    CatalogView,
    OperatingPoint,
    Pairs,
    _PairCollector,
    add_clear_rule,
    collect_pairs,
    fit_rule,
    fit_thresholds,
    fit_weights,
    keep_cnn_on,
    monotone,
    one_per_family,
    transform_name,
)
from twice.search.report import build_report
from twice.search.verdicts import CLEAR_OFF, MAX_WEIGHT, EvidenceWeights


def planted_gaussians(rng, n_pos=10000, n_neg=100000):
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    cnn = np.r_[rng.normal(0.90, 0.03, n_pos), rng.normal(0.60, 0.08, n_neg)]
    return labels, cnn


def analytic_threshold(precision: float, n_pos=10000, n_neg=100000) -> float:
    """Where n_pos * P(pos >= t) / (all >= t) == precision for the planted Gaussians."""

    def gap(t):
        tp, fp = n_pos * norm.sf(t, 0.90, 0.03), n_neg * norm.sf(t, 0.60, 0.08)
        return tp / (tp + fp) - precision

    return brentq(gap, 0.6, 0.99)


# Targets where recall is not yet 1: beyond that the highest threshold of full recall wins.
@pytest.mark.parametrize("precision", [0.99, 0.97, 0.95])
def test_cnn_threshold_recovers_the_planted_one(precision):
    rng = np.random.default_rng(1)
    labels, cnn = planted_gaussians(rng)
    dist = np.full(len(labels), NO_HASH)  # no hashes: the CNN alone
    point = fit_rule(labels, cnn, dist, precision)
    assert point.hash_max == -1
    assert point.cnn_min == pytest.approx(analytic_threshold(precision), abs=0.007)
    assert point.precision >= precision and point.target_met


def test_random_weights_regime_the_hash_decides():
    # CNN scores of pairs and non-pairs overlap completely (~0.99 for everything).
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    cnn = rng.uniform(0.985, 0.995, len(labels))
    dist = np.r_[rng.integers(0, 7, 300), rng.integers(10, 31, 3000)]
    dist[:3] = 6  # make sure the largest positive distance is present
    fit = fit_thresholds(labels, cnn, dist, 0.99, 0.9)
    assert fit.duplicate.hash_max == 6  # the smallest radius with full recall
    assert fit.duplicate.cnn_min == 1.0  # the CNN cannot reach 0.99 precision
    assert (fit.duplicate.precision, fit.duplicate.recall) == (1.0, 1.0)
    thresholds = fit.thresholds()
    assert thresholds.hash_duplicate <= thresholds.hash_similar
    assert thresholds.similar <= thresholds.duplicate == 1.0


def test_low_structure_hash_matches_do_not_cost_the_hash_rule():
    # Blurred copies of photos match their original's hash at 0 bits and the CNN is unsure of
    # them; so are pairs of different plain drawings (low structure), which search never calls
    # duplicates on the hash alone. Charged to the hash rule they would drop it.
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    cnn = np.r_[rng.uniform(0.5, 0.7, 300), rng.uniform(0.4, 0.7, 3000)]
    dist = np.r_[np.zeros(300, int), rng.integers(10, 31, 3000)]
    dist[300:400] = 0  # 100 different drawings with one hash
    structure = np.full(len(labels), 40)
    structure[300:400] = 5
    blind = fit_thresholds(labels, cnn, dist, 0.99, 0.9)
    assert blind.duplicate.hash_max == -1  # 300 / 400 = 0.75 precision at hash 0
    fit = fit_thresholds(labels, cnn, dist, 0.99, 0.9, structure=structure)
    assert fit.duplicate.hash_max == 0
    assert fit.duplicate.recall == 1.0
    assert fit.similar.hash_max >= 0  # a weak match still says similar


def test_hash_and_cnn_together_beat_either_alone():
    rng = np.random.default_rng(3)
    # Half the positives are hash-close (lossless turns), half only CNN-close (crops).
    labels = np.r_[np.ones(400, bool), np.zeros(4000, bool)]
    dist = np.r_[rng.integers(0, 4, 200), rng.integers(20, 30, 200), rng.integers(12, 33, 4000)]
    cnn = np.r_[rng.uniform(0.3, 0.9, 200), rng.uniform(0.92, 1.0, 200), rng.uniform(0.0, 0.9, 4000)]
    fit = fit_thresholds(labels, cnn, dist)
    assert fit.duplicate.recall == 1.0 and fit.duplicate.precision >= 0.99
    assert fit.duplicate.hash_max == 3
    assert 0.9 < fit.duplicate.cnn_min <= 0.92
    cnn_alone = fit_rule(labels, cnn, np.full(len(labels), NO_HASH), 0.99)
    assert cnn_alone.recall == pytest.approx(0.5, abs=0.01)


def test_a_hash_that_finds_every_pair_leaves_the_cnn_its_own_cut():
    # Known variants that are all turns and light changes: the stored hash views find each at 0
    # bits, so "hash <= 0" alone has full recall. The CNN must still fire on later crops.
    rng = np.random.default_rng(5)
    labels = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    dist = np.r_[np.zeros(300, int), rng.integers(10, 33, 3000)]
    cnn = np.r_[rng.uniform(0.93, 1.0, 300), rng.uniform(0.0, 0.95, 3000)]
    cnn_alone = fit_rule(labels, cnn, np.full(len(labels), NO_HASH), 0.99)
    assert 0.93 < cnn_alone.cnn_min < 1.0
    fit = fit_thresholds(labels, cnn, dist)
    assert fit.duplicate.hash_max == 0 and fit.duplicate.recall == 1.0
    assert fit.duplicate.cnn_min == cnn_alone.cnn_min
    fired = (dist <= 0) | (cnn >= fit.duplicate.cnn_min)
    assert fit.duplicate.false_positives == int((fired & ~labels).sum())
    assert fit.duplicate.precision == pytest.approx((fired & labels).sum() / fired.sum())
    assert fit.duplicate.precision >= 0.99
    assert fit.similar.cnn_min <= fit.duplicate.cnn_min


def test_the_cnn_stays_off_when_it_would_pull_precision_below_target():
    labels = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    dist = np.r_[np.zeros(100, int), [0], np.full(999, 30)]  # the hash alone: P 100/101
    cnn = np.r_[np.full(100, 0.99), [0.1, 0.995], np.zeros(998)]  # the CNN alone: P 100/101
    hash_alone = OperatingPoint(0, 1.0, 100 / 101, 1.0, 100, 1, 0.99, True)
    assert keep_cnn_on(hash_alone, labels, cnn, dist, 1.0) == hash_alone  # together: 100/102


def oracle(labels, cnn, dist, target):
    """Best recall with precision >= target over every (h, t) by plain loops."""
    best = 0.0
    for h in range(-1, MAX_RADIUS + 1):
        for t in sorted(set(cnn.tolist()) | {1.0}):
            tp = fp = 0
            for label, score, d in zip(labels, cnn, dist, strict=True):
                if d <= h or score >= t:
                    tp += bool(label)
                    fp += not label
            precision = tp / (tp + fp) if tp + fp else 1.0
            if precision >= target:
                best = max(best, tp / labels.sum())
    return best


@pytest.mark.parametrize("seed", range(4))
def test_fit_matches_a_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(70) < 0.3
    labels[0] = True
    cnn = np.round(np.where(labels, rng.uniform(0.5, 1.0, 70), rng.uniform(0.0, 0.8, 70)), 2)
    dist = np.where(labels, rng.integers(0, 14, 70), rng.integers(5, 40, 70))
    for target in (0.99, 0.9, 0.7):
        point = fit_rule(labels, cnn, dist, target)
        assert point.recall == pytest.approx(oracle(labels, cnn, dist, target))
        fired = (dist <= point.hash_max) | (cnn >= point.cnn_min)
        assert point.true_positives == int((fired & labels).sum())
        assert point.false_positives == int((fired & ~labels).sum())
        if point.target_met:
            assert point.precision >= target


def test_an_unreachable_target_says_so():
    labels = np.array([True, False] * 50)
    point = fit_rule(labels, np.full(100, 0.5), np.full(100, 3), 0.99)
    assert not point.target_met
    assert point.hash_max == -1 and point.cnn_min == 1.0 and point.recall == 0.0


def test_bad_arguments_name_the_value():
    labels, cnn, dist = np.array([True, False]), np.array([0.9, 0.1]), np.array([1, 30])
    with pytest.raises(ValueError, match="precision must be a number in \\(0, 1\\], got 1.5"):
        fit_thresholds(labels, cnn, dist, 1.5)
    with pytest.raises(ValueError, match="similar precision 0.995 must not exceed duplicate precision 0.99"):
        fit_thresholds(labels, cnn, dist, 0.99, 0.995)
    with pytest.raises(ValueError, match="no positive pairs"):
        fit_rule(np.array([False, False]), cnn, dist, 0.9)


# evidence weights ---------------------------------------------------------------------------


def test_monotone_pools_adjacent_violators():
    assert monotone(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)).tolist() == [1.0, 2.5, 2.5, 4.0]
    # Weighted: the heavier value pulls the pooled mean.
    assert monotone(np.array([5.0, 1.0]), np.array([3.0, 1.0])).tolist() == [4.0, 4.0]
    assert monotone(np.array([1.0, 2.0, 0.0]), np.ones(3), increasing=False).tolist() == [1.5, 1.5, 0.0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        values, weights = rng.normal(size=12), rng.uniform(0.5, 3.0, 12)
        fitted = monotone(values, weights)
        assert np.all(np.diff(fitted) >= -1e-12)
        assert np.dot(fitted, weights) == pytest.approx(np.dot(values, weights))  # pooling keeps the mass
        # No monotone sequence fits better: try pooling each adjacent pair further.
        best = np.sum(weights * (fitted - values) ** 2)
        for i in range(11):
            other = fitted.copy()
            mean = np.average(other[i : i + 2], weights=weights[i : i + 2])
            other[i : i + 2] = mean
            if np.all(np.diff(other) >= 0):
                assert np.sum(weights * (other - values) ** 2) >= best - 1e-9


def test_hash_weights_are_the_log_ratio_of_counts_when_already_monotone():
    # 6 pairs at distance 0, 2 at 10; non-pairs: 1 at 10, 9 at 30. Brute force by hand.
    labels = np.array([True] * 8 + [False] * 10)
    dist = np.array([0] * 6 + [10] * 2 + [10] + [30] * 9)
    cnn = np.linspace(0.1, 0.9, 18)
    weights = fit_weights(labels, cnn, dist)
    pos, neg = np.full(65, PSEUDO_COUNT), np.full(65, PSEUDO_COUNT)
    for d, label in zip(dist, labels, strict=True):
        (pos if label else neg)[d] += 1
    expected = np.log(pos / pos.sum()) - np.log(neg / neg.sum())
    pooled = monotone(expected, np.bincount(dist, minlength=65) + 1, increasing=False)
    np.testing.assert_allclose(weights.hash, np.clip(pooled, -MAX_WEIGHT, MAX_WEIGHT))
    assert weights.hash_weight(0) > weights.hash_weight(10) > weights.hash_weight(30)
    assert weights.source == "calibrated"


def test_weights_follow_what_separates_the_pairs():
    rng = np.random.default_rng(4)
    labels, cnn = planted_gaussians(rng, n_pos=2000, n_neg=20000)
    dist = np.where(labels, rng.integers(0, 10, len(labels)), rng.integers(8, 40, len(labels)))
    informative = fit_weights(labels, cnn, dist)
    assert np.all(np.diff(informative.hash) <= 0) and np.all(np.diff(informative.cnn) >= 0)
    assert informative.cnn_weight(0.95) - informative.cnn_weight(0.6) > 5  # the CNN separates them
    # A CNN that scores pairs and non-pairs alike (random weights): a flat curve, no say in the order.
    blind = fit_weights(labels, rng.uniform(0.98, 1.0, len(labels)), dist)
    assert max(blind.cnn) - min(blind.cnn) < 0.3
    assert blind.hash_weight(0) - blind.hash_weight(20) > 5
    stored = EvidenceWeights.from_dict(blind.to_dict())
    assert stored.hash_weight(3) == pytest.approx(blind.hash_weight(3), abs=1e-4)
    # Random weights can still put the original first within its query: the gap to the query's
    # best other score says so, even when the scores themselves do not.
    gap = np.where(
        labels, rng.choice([0.0, 0.0, 0.0, 0.002], len(labels)), rng.uniform(0.0, 0.01, len(labels))
    )
    ranked = fit_weights(labels, rng.uniform(0.98, 1.0, len(labels)), dist, gap=gap)
    assert np.all(np.diff(ranked.gap) <= 0) and ranked.gap_weight(0.0) - ranked.gap_weight(0.008) > 2
    assert ranked.cnn == (0.0,)  # score and gap are one CNN: only the better of the two counts
    restored = EvidenceWeights.from_dict(ranked.to_dict())
    assert restored.gap_weight(0.004) == pytest.approx(ranked.gap_weight(0.004), abs=1e-3)
    both = fit_weights(labels, cnn, dist, gap=rng.uniform(0.0, 0.01, len(labels)))  # a gap saying nothing
    assert both.gap == (0.0,) and both.cnn_weight(0.95) - both.cnn_weight(0.6) > 5
    assert blind.gap == (0.0,)  # no gaps given: no say
    with pytest.raises(ValueError, match="need pairs and non-pairs, got 2 of 2"):
        fit_weights(np.array([True, True]), np.array([0.5, 0.6]), np.array([1, 2]))
    only_pairs = fit_thresholds(np.array([True, True]), np.array([0.5, 0.6]), np.array([1, 2]))
    assert only_pairs.weights == EvidenceWeights.default()


# the command end to end -----------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, options):
    for key, value in {"TWICE_IMAGE_SIZE": "64", "TWICE_WORKERS": "0", "TWICE_ALLOW_DOWNLOAD": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TWICE_DEVICE", "cpu")
    monkeypatch.setenv("TWICE_DATA_DIR", str(options.data_dir))
    return lambda *argv: main(["-q", *argv])


def build_collection(tmp_path, options, embedder, count=8, blank=0):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(count):
        make_image(100 + seed, (80, 60)).save(folder / f"img_{seed}.png")
    for n in range(blank):
        Image.new("RGB", (70 + n, 50), (250, 250, 250)).save(folder / f"blank_{n}.png")
    reindex([folder], options, embedder, progress=False)
    indexer = Indexer(options, embedder.version, embedder.dim)
    augment_catalog(indexer, progress=False)
    indexer.close()
    reindex([], options, embedder, progress=False)


def test_calibrate_command_stores_thresholds_that_search_and_report_use(
    tmp_path, options, embedder, cli, capsys
):
    build_collection(tmp_path, options, embedder)
    plot = tmp_path / "curves.png"
    assert cli("calibrate", "--plot", str(plot), "--json") == 0
    details = json.loads(capsys.readouterr().out)
    assert details["model"] == embedder.version
    assert details["positives"] == 32  # 8 originals x rotate, mirror, bright, dark
    assert details["negatives"] > details["positives"]
    assert set(details["recall_by_transform"]) == {"rotate", "mirror", "bright", "dark"}
    assert details["duplicate"]["target_met"] and details["duplicate"]["precision"] >= 0.99
    assert details["recall_by_transform"]["rotate"] == 1.0
    assert details["recall_by_transform"]["mirror"] == 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    catalog = Catalog(options.catalog_url)
    stored = thresholds_for(catalog, embedder.version)
    catalog.close()
    assert stored.source == "calibrated"
    assert (stored.duplicate, stored.hash_duplicate) == (
        details["duplicate"]["cnn_min"],
        details["duplicate"]["hash_max"],
    )
    assert stored.hash_similar == details["hash_similar"]
    assert stored.weights.source == "calibrated" and details["weights"]["source"] == "calibrated"
    assert stored.weights.hash_weight(0) > stored.weights.hash_weight(30)
    # Measured from the pairs: the CNN score or its gap below each query's best, not both.
    assert (len(stored.weights.gap) > 1) != (len(stored.weights.cnn) > 1)

    engine = SearchEngine.open(options, embedder)
    response = engine.search_file(tmp_path / "in" / "img_3.png", k=3)
    engine.close()
    assert response["thresholds"] == stored.to_dict()
    report = build_report(options)
    assert report["thresholds"]["source"] == "calibrated"
    assert report["thresholds"]["duplicate"] == stored.duplicate


def test_images_without_structure_make_no_pairs(tmp_path, options, embedder, cli, capsys):
    build_collection(tmp_path, options, embedder, count=3, blank=1)
    assert cli("calibrate", "--dry-run", "--json", "--plot", str(tmp_path / "c.png")) == 0
    details = json.loads(capsys.readouterr().out)
    # The blank original and its blank variants pair with nothing: 3 originals x 4 transforms.
    assert details["positives"] == 12 and details["skipped"]["flat"] >= 1


def test_calibrate_dry_run_stores_nothing_and_prints_the_rules(tmp_path, options, embedder, cli, capsys):
    build_collection(tmp_path, options, embedder, count=4)
    assert cli("calibrate", "--dry-run", "--plot", str(tmp_path / "c.png")) == 0
    out = capsys.readouterr().out
    assert "duplicate: " in out and "dry run: thresholds NOT stored" in out
    assert "16 known variant pairs" in out
    catalog = Catalog(options.catalog_url)
    assert catalog.thresholds(embedder.version) is None
    catalog.close()


def test_calibrate_errors_say_what_to_do(tmp_path, options, embedder, cli, capsys):
    assert cli("calibrate") == 1
    assert "no index yet; run `twice reindex` first" in capsys.readouterr().err
    folder = tmp_path / "plain"
    folder.mkdir()
    make_image(1).save(folder / "a.png")
    make_image(2).save(folder / "b.png")
    reindex([folder], options, embedder, progress=False)
    assert cli("calibrate") == 1
    assert "run `twice augment` and `twice reindex` first" in capsys.readouterr().err
    assert cli("calibrate", "--precision", "2") == 1
    assert "precision must be a number in (0, 1], got 2.0" in capsys.readouterr().err


def test_positive_distances_see_the_originals_bright_view(tmp_path, options, embedder):
    originals = [pale_art(seed) for seed in range(4)]
    # Plainly, each brightened copy is far from its original: the pair would look like a non-pair.
    for image in originals:
        assert hamming(dihedral_hashes(apply_transform(image, "bright")), phash(image)).min() > 8
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, image in enumerate(originals):
        image.save(folder / f"art_{seed}.png")
    reindex([folder], options, embedder, progress=False)
    indexer = Indexer(options, embedder.version, embedder.dim)
    augment_catalog(indexer, progress=False)
    indexer.close()
    reindex([], options, embedder, progress=False)
    catalog = Catalog(options.catalog_url)
    vectors = load_vectors_for_search(options, embedder.version, embedder.dim)
    pairs = collect_pairs(catalog, vectors, options, progress=False)
    catalog.close()
    bright = [d for d, label, spec in zip(pairs.dist, pairs.labels, pairs.transforms, strict=True)
              if label and transform_name(spec) == "bright"]  # fmt: skip
    assert len(bright) == 4 and max(bright) <= 2


def test_transform_name_names_a_chain_by_its_steps():
    assert transform_name("bright:60") == "bright" and transform_name(None) == "unknown"
    assert transform_name("tilt:10:black+cropbox:0.5") == "tilt+cropbox"


# the clear-match rule -------------------------------------------------------------------------


def planted_clear_pairs(rng, n_pos=400, n_neg=4000):
    """Half the positives score high; the other half (tilts, say) score like the negatives'
    best but stand far clear of the query's other images, which no negative does."""
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    half = n_pos // 2
    cnn = np.r_[rng.uniform(0.9, 1.0, half), rng.uniform(0.5, 0.7, half), rng.uniform(0.0, 0.8, n_neg)]
    margin = np.r_[rng.uniform(0.0, 0.5, half), rng.uniform(0.3, 0.5, half), rng.uniform(-0.4, 0.2, n_neg)]
    return labels, cnn, np.full(len(labels), NO_HASH), margin


def test_the_clear_match_rule_finds_copies_the_score_alone_cannot():
    labels, cnn, dist, margin = planted_clear_pairs(np.random.default_rng(7))
    plain = fit_thresholds(labels, cnn, dist)
    assert plain.duplicate.recall == pytest.approx(0.5, abs=0.01)
    assert plain.duplicate.clear_margin == CLEAR_OFF  # no margins: the rule stays off
    fit = fit_thresholds(labels, cnn, dist, margin=margin)
    point = fit.duplicate
    assert point.recall == 1.0 and point.precision >= 0.99
    assert 0.2 <= point.clear_margin <= 0.3 and point.clear_score < 0.7 < point.cnn_min
    fired = point.fires(cnn, dist, margin)
    assert point.true_positives == int((fired & labels).sum())
    assert point.false_positives == int((fired & ~labels).sum())
    t = fit.thresholds()
    assert (t.clear_score, t.clear_margin) == (point.clear_score, point.clear_margin)
    assert t.judge(0.6, None, margin=0.35).verdict == "duplicate"
    assert t.judge(0.6, None, margin=0.1).verdict != "duplicate"
    assert fit.similar.cnn_min <= point.cnn_min


def clear_oracle(point, labels, cnn, dist, margin, target):
    """Best recall of "point's rule, its CNN cut raised to any t2, or (cnn >= t1 and margin >= m)"
    with precision >= target, over every measured t2, t1 and m."""
    best = point.recall
    for t2 in [t for t in set(cnn.tolist()) | {1.0} if t >= point.cnn_min]:
        base = (dist <= point.hash_max) | (cnn >= t2)
        for t1 in set(cnn[labels].tolist()):
            for m in set(margin.tolist()):
                fired = base | ((cnn >= t1) & (margin >= m))
                tp, fp = int((fired & labels).sum()), int((fired & ~labels).sum())
                if tp and tp >= target * (tp + fp):
                    best = max(best, tp / labels.sum())
    return best


@pytest.mark.parametrize("seed", range(3))
def test_the_clear_match_rule_matches_a_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.35
    labels[0] = True
    cnn = np.round(np.where(labels, rng.uniform(0.4, 1.0, 60), rng.uniform(0.0, 0.85, 60)), 2)
    margin = np.round(np.where(labels, rng.uniform(0.0, 0.5, 60), rng.uniform(-0.3, 0.3, 60)), 2)
    dist = np.where(labels, rng.integers(0, 20, 60), rng.integers(5, 40, 60))
    for target in (0.99, 0.9):
        point = fit_rule(labels, cnn, dist, target)
        clear = add_clear_rule(point, labels, cnn, dist, margin)
        assert clear.recall == pytest.approx(clear_oracle(point, labels, cnn, dist, margin, target))
        assert clear.recall >= point.recall and clear.hash_max == point.hash_max
        fired = clear.fires(cnn, dist, margin)
        assert clear.true_positives == int((fired & labels).sum())
        assert clear.false_positives == int((fired & ~labels).sum())
        assert clear.precision >= target


def test_pair_margins_are_measured_against_a_third_family(tmp_path, options, embedder):
    build_collection(tmp_path, options, embedder, count=6)
    catalog = Catalog(options.catalog_url)
    vectors = load_vectors_for_search(options, embedder.version, embedder.dim)
    view = CatalogView(catalog, vectors)
    rng = np.random.default_rng(0)
    collector = _PairCollector(view, 10, 5, rng)
    queries = [i for i in view.stored if view.has_vector(i)]
    hashes = {
        i: dihedral_hashes(Image.open(options.images_dir / view.stored[i]).convert("RGB")) for i in queries
    }
    collector.add_batch(queries, np.stack([hashes[i] for i in queries]), [40] * len(queries))
    pairs = collector.scored()
    catalog.close()
    # Brute force: every vector against every other, by family.
    S = view.xb @ view.xb.T
    row = {int(i): n for n, i in enumerate(view.ids)}
    roots = np.array([view.root(int(i)) for i in view.ids])
    assert pairs.labels.any() and (~pairs.labels).any()
    for a, b, score, margin in zip(collector.left, collector.right, pairs.cnn, pairs.margin, strict=True):
        third = (roots != view.root(a)) & (roots != view.root(b))
        assert score == pytest.approx(S[row[a], row[b]], abs=1e-5)
        assert margin == pytest.approx(score - S[row[a]][third].max(), abs=1e-5)


def test_exported_thresholds_ship_with_a_checkpoint_and_a_fresh_data_directory_uses_them(
    tmp_path, monkeypatch, embedder, cli, capsys
):
    from conftest import make_options
    from twice.model import Embedder
    from twice.model.weights import save_checkpoint

    checkpoint = save_checkpoint(embedder.net, tmp_path / "tiny.pt", image_size=64, half=False)
    fitting = make_options(tmp_path / "fit", checkpoint=str(checkpoint))
    model = Embedder.from_options(fitting)
    build_collection(tmp_path, fitting, model)
    monkeypatch.setenv("TWICE_DATA_DIR", str(fitting.data_dir))
    monkeypatch.setenv("TWICE_CHECKPOINT", str(checkpoint))
    shipped = tmp_path / "shipped.pt"
    assert (
        cli(
            "calibrate",
            "--dry-run",
            "--json",
            "--plot",
            str(tmp_path / "c.png"),
            "--export-shipped",
            str(shipped),
        )
        == 0
    )
    details = json.loads(capsys.readouterr().out)
    assert details["change"]["before"]["source"] == "default"  # nothing shipped in tiny.pt yet

    fresh = make_options(tmp_path / "fresh", checkpoint=str(shipped))
    shipped_model = Embedder.from_options(fresh)
    reindex([tmp_path / "in"], fresh, shipped_model, progress=False)
    engine = SearchEngine.open(fresh, shipped_model)
    rule = engine.thresholds
    engine.close()
    assert rule.source == "shipped" and rule.to_dict()["source"] == "shipped"
    assert (rule.duplicate, rule.hash_duplicate) == (
        details["duplicate"]["cnn_min"],
        details["duplicate"]["hash_max"],
    )
    # `twice report` judges by the same shipped rule (it judged by the defaults before).
    monkeypatch.setenv("TWICE_DATA_DIR", str(fresh.data_dir))
    monkeypatch.setenv("TWICE_CHECKPOINT", str(shipped))
    assert cli("report", "--format", "json", "-o", "-") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["thresholds"]["source"] == "shipped"
    assert (report["threshold"], report["hash_threshold"]) == (rule.duplicate, rule.hash_duplicate)


def test_a_query_counts_each_other_family_once(tmp_path, options, embedder):
    build_collection(tmp_path, options, embedder, count=6)
    catalog = Catalog(options.catalog_url)
    vectors = load_vectors_for_search(options, embedder.version, embedder.dim)
    view = CatalogView(catalog, vectors)
    catalog.close()
    collector = _PairCollector(view, 10, 5, np.random.default_rng(0))
    queries = [i for i in view.stored if view.has_vector(i)]
    hashes = [
        dihedral_hashes(Image.open(options.images_dir / view.stored[i]).convert("RGB")) for i in queries
    ]
    collector.add_batch(queries, np.stack(hashes), [40] * len(queries))
    each, merged = collector.scored(), collector.pairs()
    keys = collector.family_keys()
    families = {
        (a, view.root(b))
        for a, b, label in zip(collector.left, collector.right, each.labels, strict=True)
        if not label
    }
    # 6 families of 5 (an original, rotate, mirror, bright, dark): a query's top 10 holds
    # several members of each other family it reaches.
    assert (~merged.labels).sum() == len(families) < (~each.labels).sum()
    assert merged.labels.sum() == each.labels.sum()
    negatives = np.flatnonzero(~merged.labels)
    for n, key in zip(negatives, np.unique(keys[keys >= 0]), strict=True):
        members = keys == key
        assert merged.cnn[n] == pytest.approx(each.cnn[members].max())
        assert merged.dist[n] == each.dist[members].min()
        assert merged.margin[n] == pytest.approx(each.margin[members].max())


@pytest.mark.parametrize("seed", range(5))
def test_a_merged_negative_fires_exactly_when_one_of_its_pairs_would(seed):
    rng = np.random.default_rng(seed)
    n = 200
    labels = rng.random(n) < 0.3
    keys = np.where(labels, -1, rng.integers(0, 20, n))
    cnn = rng.uniform(0, 1, n)
    third = rng.uniform(0, 0.6, 21)[keys]  # one third-family score per query and other family
    pairs = Pairs(
        labels, cnn, rng.integers(0, 30, n), [None] * n,
        gap=rng.uniform(0, 0.5, n), margin=cnn - third, structure=np.full(n, 40),
    )  # fmt: skip
    merged = one_per_family(pairs, keys)
    groups = np.unique(keys[~labels])
    assert merged.labels.sum() == labels.sum() and (~merged.labels).sum() == len(groups)
    for _ in range(20):
        point = OperatingPoint(
            int(rng.integers(-1, 15)), float(rng.uniform(0.3, 1)), 1.0, 1.0, 0, 0, 0.99, True,
            clear_score=float(rng.uniform(0, 1)), clear_margin=float(rng.uniform(0, 0.5)),
        )  # fmt: skip
        fired = point.fires(pairs.cnn, pairs.dist, pairs.margin)
        got = point.fires(merged.cnn, merged.dist, merged.margin)
        assert got[~merged.labels].tolist() == [bool(fired[keys == k].any()) for k in groups]
        assert (got[merged.labels] == fired[labels]).all()


def test_weights_whose_knots_round_together_still_load_back():
    weights = EvidenceWeights(
        EvidenceWeights.default().hash, (0.5, 0.9, 0.9 + 1e-9), (-1.0, 0.5, 2.0),
        gap_knots=(0.0, 1e-9, 0.1), gap=(1.0, 0.5, -1.0),
    )  # fmt: skip
    loaded = EvidenceWeights.from_dict(weights.to_dict())
    assert loaded.cnn_knots == (0.5, 0.9) and loaded.cnn == (-1.0, 0.5)
    assert loaded.gap_knots == (0.0, 0.1) and loaded.gap == (1.0, -1.0)
