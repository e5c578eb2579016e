"""``twice calibrate``: fit the verdict thresholds of a model version from known variant pairs.

Positives are the catalog's known variant pairs (a row with ``parent_id`` and its parent).
Negatives are pairs of images from different families (a family is an original and every
variant made from it): for every sampled query image, the non-family images that search
would actually put in front of it (its CNN top-k and its hash matches) plus a few random ones.
Hard negatives make the fitted precision what a search user sees, not what random pairs see.
A query counts each other family once (``one_per_family``): a wrong family is one wrong answer
to that query however many of its variants the catalog holds, as the right one is one right
answer. Counted per image, the ~15 variants of one look-alike family (the letters S and s of a
stamp set) weighed 15 times each query and made the fit drop the hash rule for the whole catalog.

Each pair has a CNN cosine score and a hash distance: the best of the query's 8 dihedral views
against the other image's stored hashes, plain and photometric (``view_distances``), as search
sees it, so a brightened copy is measured against its original's bright view.
The duplicate rule "hash distance <= h or CNN score >= t" is fitted for the highest recall
whose precision on these pairs reaches the target (default 0.99); the similar rule likewise
with a lower target, never stricter than the duplicate rule. Then the clear-match rule
(``search.verdicts``): "CNN score >= t1 and at least m above the best other family", fitted so
that the three together still reach the target. Its margin is measured as search would see it
if the pair were a false match: against the best image of any third family (neither the query's
nor the other image's), which is what a query whose original is not catalogued has. When the
CNN cannot separate the pairs (random weights score everything ~0.99) its duplicate threshold
ends up at 1.0 and the hash decides alone.

The same pairs give the evidence weights that order results within a verdict
(``fit_weights``): for each hash distance and each band of CNN scores, the log of how much
more often known variant pairs have it than non-pairs, smoothed and made monotone.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import select
from tqdm import tqdm

from twice.files import ImageStore
from twice.hashing import (
    HASH_VERSION,
    MAX_RADIUS,
    STORED_COLUMNS,
    STORED_KINDS,
    HashIndex,
    is_flat,
    row_hashes,
    view_distances,
)
from twice.indexer import Catalog, ImageRow, VectorIndex, load_vectors_for_search
from twice.indexer.batches import iter_batches

from .calibrate_verify import ALWAYS, verification_counts, verified_evidence
from .report_hashes import NO_HASH, StoredViews
from .report_verify import PairVerifier
from .verdicts import (
    CLEAR_OFF,
    DEFAULT_LOW_STRUCTURE,
    HASH_DISTANCES,
    HASH_OFF,
    MAX_WEIGHT,
    EvidenceWeights,
    Thresholds,
    rule_text,
    thresholds_for,
)

LOG = logging.getLogger(__name__)
STORED_HASH_COLUMNS = tuple(getattr(ImageRow, name) for name in STORED_COLUMNS)

DEFAULT_PRECISION = 0.99
DEFAULT_SIMILAR_PRECISION = 0.90
DEFAULT_PAIRS = 3000
DEFAULT_K = 10
DEFAULT_RANDOM = 5
WEIGHT_BINS = 20  # CNN score bands of the weight curve (equal numbers of pairs)
CLEAR_CUTS = 40  # candidate score floors (and as many duplicate cuts) tried for the clear-match rule
PSEUDO_COUNT = 0.5  # added to every count, so an empty cell is not an infinite weight


# fitting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """One rule "hash <= hash_max or cnn >= cnn_min [or (cnn >= clear_score and margin >=
    clear_margin)]" and how it does on the pairs."""

    hash_max: int
    cnn_min: float
    precision: float
    recall: float
    true_positives: int
    false_positives: int
    target: float
    target_met: bool
    clear_score: float = 1.0
    clear_margin: float = CLEAR_OFF

    def to_dict(self) -> dict:
        return asdict(self)

    def fires(self, cnn: np.ndarray, dist: np.ndarray, margin: np.ndarray | None = None) -> np.ndarray:
        """Which pairs the rule calls duplicate (``margin`` None: the clear-match rule is off)."""
        fired = (dist <= self.hash_max) | (cnn >= self.cnn_min)
        if margin is not None:
            fired |= (cnn >= self.clear_score) & (margin >= self.clear_margin)
        return fired


def check_precision(value: float, name: str = "precision") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _cuts(scores: np.ndarray, ceiling: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate CNN thresholds for descending ``scores`` and how many pairs each keeps.

    The first cut is ``ceiling`` itself; the others fall halfway between distinct scores, so a
    threshold never sits on a measured score.
    """
    above = int(np.sum(scores >= ceiling))
    thresholds, kept = [ceiling], [above]
    if above < len(scores):
        below = scores[above:]
        ends = np.flatnonzero(np.r_[below[:-1] > below[1:], True])
        nxt = np.r_[below[1:], below[-1:] - 1e-6]
        thresholds += ((below[ends] + nxt[ends]) / 2).tolist()
        kept += (above + ends + 1).tolist()
    return np.asarray(thresholds), np.asarray(kept)


def curve(labels: np.ndarray, cnn: np.ndarray, dist: np.ndarray, hash_max: int, ceiling: float = 1.0):
    """(thresholds, tp, fp) of "hash <= hash_max or cnn >= t" for every cut t <= ceiling."""
    by_hash = dist <= hash_max
    tp0, fp0 = int(np.sum(labels & by_hash)), int(np.sum(~labels & by_hash))
    return _sweep(labels[~by_hash], cnn[~by_hash], ceiling, tp0, fp0)


def _sweep(labels: np.ndarray, values: np.ndarray, ceiling: float, tp0: int = 0, fp0: int = 0):
    """(thresholds, tp, fp) as a cut on ``values`` falls from ``ceiling``, on top of ``tp0`` and
    ``fp0`` pairs that another part of the rule already fires."""
    order = np.argsort(-values, kind="stable")
    thresholds, kept = _cuts(values[order], ceiling)
    positive = labels[order]
    return thresholds, tp0 + np.r_[0, np.cumsum(positive)][kept], fp0 + np.r_[0, np.cumsum(~positive)][kept]


def fit_rule(
    labels: np.ndarray,
    cnn: np.ndarray,
    dist: np.ndarray,
    target: float,
    hash_floor: int = HASH_OFF,
    ceiling: float = 1.0,
    max_radius: int = MAX_RADIUS,
) -> OperatingPoint:
    """The rule with the highest recall whose precision reaches ``target``.

    ``hash_floor`` and ``ceiling`` keep the rule at least as loose as another (the similar
    rule is never stricter than the duplicate rule). Ties in recall go to the smaller hash
    radius, then the higher CNN threshold, except that a CNN left off by the tie keeps the cut
    it earns alone (``keep_cnn_on``). When no rule that finds any pair reaches the target, the
    strictest one is returned with ``target_met`` False.
    """
    labels = np.asarray(labels, bool)
    cnn, dist = np.asarray(cnn, np.float64), np.asarray(dist, np.int64)
    if not labels.any():
        raise ValueError("no positive pairs to calibrate from")
    target = check_precision(target)
    positives = int(labels.sum())
    best: OperatingPoint | None = None
    for hash_max in range(hash_floor, max_radius + 1):
        thresholds, tp, fp = curve(labels, cnn, dist, hash_max, ceiling)
        i = _best_cut(tp, fp, target)
        if i is None:
            continue
        point = OperatingPoint(
            hash_max, float(thresholds[i]), float(tp[i] / (tp[i] + fp[i])), float(tp[i] / positives),
            int(tp[i]), int(fp[i]), target, True,
        )  # fmt: skip
        if best is None or point.recall > best.recall:
            best = point
    if best is None:
        thresholds, tp, fp = curve(labels, cnn, dist, hash_floor, ceiling)
        fired = tp[0] + fp[0]
        best = OperatingPoint(
            hash_floor, float(ceiling), float(tp[0] / fired) if fired else 1.0, float(tp[0] / positives),
            int(tp[0]), int(fp[0]), target, False,
        )  # fmt: skip
        return best
    return keep_cnn_on(best, labels, cnn, dist, ceiling)


def _best_cut(tp: np.ndarray, fp: np.ndarray, target: float) -> int | None:
    """Index of the first cut reaching the best recall at ``target`` precision (the highest
    CNN threshold of that recall), or None when no cut that fires reaches it."""
    fired = tp + fp
    precision = np.where(fired > 0, tp / np.maximum(fired, 1), 1.0)
    ok = np.flatnonzero((precision >= target) & (tp > 0))  # firing never is no answer
    return int(ok[np.argmax(tp[ok])]) if len(ok) else None


def keep_cnn_on(
    point: OperatingPoint, labels: np.ndarray, cnn: np.ndarray, dist: np.ndarray, ceiling: float
) -> OperatingPoint:
    """The rule with the CNN cut it earns alone, when the best rule left the CNN off.

    When the hash finds every pair it can, the best rule's CNN cut ties at the ceiling and never
    fires. A catalog whose known variants are all turns, flips and light changes (which the
    stored hash views match exactly) would then calibrate the CNN out of every later search,
    crops and tilts included. So the CNN keeps the cut at which it alone reaches the target
    precision on these pairs, provided the two signals together still reach it.
    """
    if point.cnn_min < ceiling:
        return point
    thresholds, tp, fp = curve(labels, cnn, dist, HASH_OFF, ceiling)
    i = _best_cut(tp, fp, point.target)
    if i is None or thresholds[i] >= point.cnn_min:
        return point
    fired = (dist <= point.hash_max) | (cnn >= thresholds[i])
    hits, misses = int(np.sum(fired & labels)), int(np.sum(fired & ~labels))
    if hits < point.target * (hits + misses):
        return point
    return replace(_counted(point, hits, misses, labels), cnn_min=float(thresholds[i]))


def add_clear_rule(
    point: OperatingPoint, labels: np.ndarray, cnn: np.ndarray, dist: np.ndarray, margin: np.ndarray
) -> OperatingPoint:
    """``point`` with the clear-match rule that adds the most recall at its target precision.

    The duplicate cut may rise to make room: every candidate pair (cut t2 >= point.cnn_min,
    floor t1 < t2) gets the best margin cut, and the highest recall wins (then the fewest false
    duplicates); none that adds recall leaves ``point`` as it was.
    """
    labels = np.asarray(labels, bool)
    cnn, dist, margin = (np.asarray(a, np.float64) for a in (cnn, dist, margin))
    if not point.target_met:
        return point
    positives = int(labels.sum())
    best = point
    for t2 in _duplicate_cuts(point, labels, cnn, dist):
        base = (dist <= point.hash_max) | (cnn >= t2)
        tp0, fp0 = int(np.sum(base & labels)), int(np.sum(base & ~labels))
        rest = ~base
        for t1 in _clear_floors(cnn[rest & labels], t2):
            pool = rest & (cnn >= t1)
            cuts, tp, fp = _sweep(labels[pool], margin[pool], CLEAR_OFF, tp0, fp0)
            i = _best_cut(tp, fp, point.target)
            if i is not None and (tp[i], -fp[i]) > (best.true_positives, -best.false_positives):
                best = replace(
                    point, cnn_min=float(t2), clear_score=float(t1), clear_margin=float(cuts[i]),
                    precision=float(tp[i] / (tp[i] + fp[i])), recall=float(tp[i] / positives),
                    true_positives=int(tp[i]), false_positives=int(fp[i]),
                )  # fmt: skip
    return best


def _duplicate_cuts(point: OperatingPoint, labels, cnn, dist) -> np.ndarray:
    """Up to ``CLEAR_CUTS`` duplicate cuts from ``point``'s upwards, evenly spread over the
    positive pairs they would give up to the clear-match rule."""
    thresholds, tp, _ = curve(labels, cnn, dist, point.hash_max)
    above = thresholds >= point.cnn_min
    thresholds, tp = thresholds[above], tp[above]
    wanted = np.linspace(tp.min(), tp.max(), CLEAR_CUTS)
    picks = np.searchsorted(tp, wanted)  # tp rises as the cut falls, one entry per cut
    return np.unique(thresholds[np.minimum(picks, len(tp) - 1)])


def _clear_floors(positive_scores: np.ndarray, ceiling: float) -> np.ndarray:
    """Candidate score floors for the clear-match rule: the scores of the positive pairs the
    duplicate cut leaves (each floor keeps its pair), at most ``CLEAR_CUTS`` evenly spread."""
    scores = np.unique(positive_scores[positive_scores < ceiling])
    if len(scores) > CLEAR_CUTS:
        scores = scores[np.linspace(0, len(scores) - 1, CLEAR_CUTS).round().astype(int)]
    return scores


@dataclass(frozen=True)
class Fit:
    duplicate: OperatingPoint
    similar: OperatingPoint
    weights: EvidenceWeights = field(default_factory=EvidenceWeights.default)

    def thresholds(self, source: str = "calibrated") -> Thresholds:
        return Thresholds(
            duplicate=self.duplicate.cnn_min,
            similar=self.similar.cnn_min,
            source=source,
            hash_duplicate=self.duplicate.hash_max,
            hash_similar=self.similar.hash_max,
            clear_score=self.duplicate.clear_score,
            clear_margin=self.duplicate.clear_margin,
            weights=self.weights,
        )


def fit_thresholds(
    labels: np.ndarray,
    cnn: np.ndarray,
    dist: np.ndarray,
    precision: float = DEFAULT_PRECISION,
    similar_precision: float = DEFAULT_SIMILAR_PRECISION,
    gap: np.ndarray | None = None,
    margin: np.ndarray | None = None,
    structure: np.ndarray | None = None,
    rule: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    similar_floor: float = -1.0,
) -> Fit:
    """Fit the duplicate rule for ``precision`` (with the clear-match rule when pairs come with
    their ``margin``), then the similar rule around it, and the weights.

    With each pair's query ``structure``, a hash match on a low-structure query counts for the
    duplicate rule as search counts it: not at all (``Thresholds.judge`` makes it similar at
    most). Otherwise the low-structure drawings whose hashes match (stars of one series, plain
    icons) would be charged to the hash rule, and the fit would drop the hash altogether, along
    with the blurred, rescaled and re-encoded copies only the hash calls duplicates.

    ``rule`` (CNN scores, hash distances, margins), when given, is what the duplicate rule is
    fitted on instead: the evidence once verification has made or demoted duplicates. Pairs
    verification makes duplicates whatever the cuts (``ALWAYS``) are left out of the fit, so the
    rule reaches the target on the pairs it decides (verification wrongly verifies look-alike
    drawings of one set, 52 of 39,281 on the bench's catalog: no cut can answer for those); the
    point's figures then count them back in. The similar cut stays at ``similar_floor`` or above
    (at most the duplicate cut): verification's floors hang from it, so a lower one would make
    duplicates of pairs the fit saw verification refuse.
    """
    precision = check_precision(precision)
    similar_precision = check_precision(similar_precision, "similar precision")
    if similar_precision > precision:
        raise ValueError(
            f"similar precision {similar_precision} must not exceed duplicate precision {precision}"
        )
    labels = np.asarray(labels, bool)
    rule_cnn, rule_dist, rule_margin = rule if rule is not None else (cnn, dist, margin)
    rule_cnn = np.asarray(rule_cnn, np.float64)
    rule_margin = None if rule_margin is None else np.asarray(rule_margin, np.float64)
    strong = np.asarray(strong_distances(np.asarray(rule_dist, np.int64), structure))
    open_ = rule_cnn < ALWAYS  # not made a duplicate by verification alone
    if not (open_ & labels).any():
        open_ = np.ones(len(labels), bool)  # nothing left to fit a rule on: fit it on them all
    duplicate = fit_rule(labels[open_], rule_cnn[open_], strong[open_], precision)
    if rule_margin is not None:
        duplicate = add_clear_rule(
            duplicate, labels[open_], rule_cnn[open_], strong[open_], rule_margin[open_]
        )
    duplicate = counted_in(duplicate, labels, ~open_)
    similar = fit_rule(
        labels, cnn, dist, similar_precision, hash_floor=duplicate.hash_max, ceiling=duplicate.cnn_min
    )
    similar = raised_to(similar, min(similar_floor, duplicate.cnn_min), labels, cnn, dist)
    if labels.all():  # nothing to weigh the evidence against
        LOG.warning("no non-pairs to calibrate from: evidence weights stay the defaults")
        return Fit(duplicate, similar)
    return Fit(duplicate, similar, fit_weights(labels, cnn, dist, gap=gap))


def raised_to(point: OperatingPoint, cut: float, labels, cnn, dist) -> OperatingPoint:
    """``point`` with its CNN cut raised to ``cut`` where it is lower, and its figures again."""
    if point.cnn_min >= cut:
        return point
    raised = replace(point, cnn_min=float(cut))
    fired = raised.fires(np.asarray(cnn), np.asarray(dist))
    return _counted(raised, int(np.sum(fired & labels)), int(np.sum(fired & ~labels)), labels)


def counted_in(point: OperatingPoint, labels: np.ndarray, verified: np.ndarray) -> OperatingPoint:
    """``point``'s figures over every pair: the ``verified`` ones (duplicates whatever the rule)
    added to those it was fitted on."""
    if not verified.any():
        return point
    tp = point.true_positives + int(np.sum(labels & verified))
    fp = point.false_positives + int(np.sum(~labels & verified))
    return _counted(point, tp, fp, labels)


def _counted(point: OperatingPoint, tp: int, fp: int, labels: np.ndarray) -> OperatingPoint:
    """``point`` with ``tp`` and ``fp`` fired pairs of ``labels``, its precision and recall."""
    return replace(
        point,
        true_positives=tp,
        false_positives=fp,
        precision=tp / (tp + fp) if tp + fp else 1.0,
        recall=tp / max(int(labels.sum()), 1),
    )


def fit_pairs(pairs: Pairs, precision: float, similar_precision: float = DEFAULT_SIMILAR_PRECISION) -> Fit:
    """``fit_thresholds`` on scored pairs, with every signal they carry: the duplicate rule on
    the evidence verification leaves (``Pairs.rule_evidence``), the rest on the plain scores."""
    return fit_thresholds(
        pairs.labels,
        pairs.cnn,
        pairs.dist,
        precision,
        similar_precision,
        pairs.gap,
        pairs.margin,
        pairs.structure,
        rule=pairs.rule_evidence() if pairs.rule_cnn is not None else None,
        similar_floor=-1.0 if pairs.verified_with is None else pairs.verified_with,
    )


def strong_distances(dist: np.ndarray, structure: np.ndarray | None) -> np.ndarray:
    """Hash distances as the duplicate rule counts them: a match on a low-structure query
    (``Thresholds.is_low_structure``) is none, since search makes it similar at most."""
    if structure is None:
        return dist
    return np.where(np.asarray(structure) < DEFAULT_LOW_STRUCTURE, NO_HASH, dist)


def rule_scores(thresholds: Thresholds, pairs: Pairs) -> dict:
    """Duplicate precision and recall of ``thresholds`` (``Thresholds.judge``) on scored pairs."""
    unknown = [None] * len(pairs.labels)
    scores, distances, margins = pairs.rule_evidence()
    margins = margins if margins is not None else unknown
    structures = pairs.structure if pairs.structure is not None else unknown
    said = np.array(
        [
            thresholds.judge(
                float(c),
                None if d >= NO_HASH else int(d),
                margin=None if m is None else float(m),
                structure=None if st is None else int(st),
            ).verdict
            == "duplicate"
            for c, d, m, st in zip(scores, distances, margins, structures, strict=True)
        ],
        bool,
    )
    labels = np.asarray(pairs.labels, bool)
    tp, fp = int(np.sum(said & labels)), int(np.sum(said & ~labels))
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
        "recall": round(tp / max(int(labels.sum()), 1), 4),
    }


def monotone(values: np.ndarray, weights: np.ndarray, increasing: bool = True) -> np.ndarray:
    """The weighted least-squares monotone fit of ``values`` (pool adjacent violators)."""
    values = np.asarray(values, np.float64)
    if not increasing:
        return -monotone(-values, weights)
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(values.tolist(), np.asarray(weights, np.float64).tolist(), strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (v2, w2, n2), (v1, w1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks]) if blocks else values


def _log_ratio(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """log P(cell | pair) - log P(cell | non-pair), with a pseudo-count in every cell."""
    pos, neg = pos + PSEUDO_COUNT, neg + PSEUDO_COUNT
    return np.log(pos / pos.sum()) - np.log(neg / neg.sum())


def fit_weights(
    labels: np.ndarray,
    cnn: np.ndarray,
    dist: np.ndarray,
    bins: int = WEIGHT_BINS,
    gap: np.ndarray | None = None,
) -> EvidenceWeights:
    """Evidence weights measured on scored pairs: non-increasing in hash distance and in the CNN
    gap, non-decreasing in CNN score, each clipped to +-``MAX_WEIGHT`` nats; of CNN score and gap
    only the one that separates the pairs better is kept. A signal that does not separate the
    pairs comes out (nearly) flat, so it barely moves the order of results."""
    labels = np.asarray(labels, bool)
    cnn, dist = np.asarray(cnn, np.float64), np.asarray(dist, np.int64)
    if not labels.any() or labels.all():
        raise ValueError(f"evidence weights need pairs and non-pairs, got {labels.sum()} of {len(labels)}")
    hashed = dist < HASH_DISTANCES
    pos = np.bincount(dist[hashed & labels], minlength=HASH_DISTANCES)[:HASH_DISTANCES]
    neg = np.bincount(dist[hashed & ~labels], minlength=HASH_DISTANCES)[:HASH_DISTANCES]
    hash_weights = monotone(_log_ratio(pos, neg), pos + neg + 1, increasing=False)
    cnn_knots, cnn_weights, cnn_info = _binned_weights(labels, cnn, bins, increasing=True)
    gap_knots, gap_weights = (0.0,), (0.0,)
    if gap is not None:
        gap_knots, gap_weights, gap_info = _binned_weights(labels, np.asarray(gap, np.float64), bins, False)
        # Score and gap are two views of one CNN: summing both counts it twice (a trained CNN
        # that scores a brightened copy 0.45 then outvoted an 8-bit hash match). Keep the one that
        # separates the pairs better; random weights keep the gap, trained ones mostly the score.
        if gap_info > cnn_info:
            cnn_knots, cnn_weights = (0.0,), (0.0,)
        else:
            gap_knots, gap_weights = (0.0,), (0.0,)
    return EvidenceWeights(
        tuple(np.clip(hash_weights, -MAX_WEIGHT, MAX_WEIGHT).tolist()),
        cnn_knots,
        cnn_weights,
        "calibrated",
        gap_knots,
        gap_weights,
    )


def _binned_weights(labels: np.ndarray, values: np.ndarray, bins: int, increasing: bool):
    """(knots, weights, information): the log ratio in equal-count bins of ``values``, monotone,
    one knot per bin, and how well it separates pairs from non-pairs (the J-divergence, nats)."""
    order = np.argsort(values, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
    knots = np.array([values[g].mean() for g in groups])
    pos = np.array([labels[g].sum() for g in groups], np.float64)
    neg = np.array([len(g) - labels[g].sum() for g in groups], np.float64)
    weights = monotone(_log_ratio(pos, neg), pos + neg, increasing=increasing)
    information = float(np.sum((pos / pos.sum() - neg / neg.sum()) * weights))
    knots, first = np.unique(knots, return_index=True)  # tied values: one knot
    clipped = np.clip(weights[first], -MAX_WEIGHT, MAX_WEIGHT)
    return tuple(knots.tolist()), tuple(clipped.tolist()), information


# pairs from the catalog -----------------------------------------------------------------------


@dataclass
class Pairs:
    """Scored pairs: label (known variant pair), CNN score, hash distance, variant transform."""

    labels: np.ndarray
    cnn: np.ndarray
    dist: np.ndarray
    transforms: list[str | None]
    skipped: Counter = field(default_factory=Counter)
    queries: int = 0
    gap: np.ndarray | None = None  # the query's best CNN score over other images, minus this one
    # This score minus the query's best over a third family (neither side's): the clear margin.
    margin: np.ndarray | None = None
    structure: np.ndarray | None = None  # the query's hash structure, as search judges with it
    # The evidence as the duplicate rule sees it once verification has had its say
    # (``calibrate_verify.verified_evidence``); None: the plain scores above.
    rule_cnn: np.ndarray | None = None
    rule_dist: np.ndarray | None = None
    rule_margin: np.ndarray | None = None
    verified_with: float | None = None  # the similar cut verification judged with (its floors)

    def __len__(self) -> int:
        return len(self.labels)

    def rule_evidence(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(CNN scores, hash distances, margins) the duplicate rule is fitted on."""
        if self.rule_cnn is None:
            return self.cnn, self.dist, self.margin
        return self.rule_cnn, self.rule_dist, self.rule_margin


class CatalogView:
    """Rows, families, vectors and hashes of one catalog + index, for pair scoring."""

    def __init__(self, catalog: Catalog, vectors: VectorIndex) -> None:
        with catalog.session() as session:
            columns = (ImageRow.id, ImageRow.parent_id, ImageRow.transform, ImageRow.stored_path)
            rows = session.execute(
                select(*columns, ImageRow.phash, *STORED_HASH_COLUMNS, ImageRow.phash_version)
            ).all()
        self.parent = {r.id: r.parent_id for r in rows}
        self.transform = {r.id: r.transform for r in rows}
        self.stored = {r.id: r.stored_path for r in rows}
        current = [r for r in rows if r.phash is not None and r.phash_version == HASH_VERSION]
        self.phash = {r.id: r.phash for r in current}
        # Every stored hash of an image (plain, then STORED_VIEWS; 0 where NULL), as search has them.
        self.hashes = {r.id: np.array([h or 0 for h in row_hashes(r)], np.int64) for r in current}
        # Images without structure match each other whatever they were made from: no pairs.
        self.flat = {i for i, h in self.phash.items() if is_flat(h)}
        self.ids, self.xb = vectors.vectors()
        self.vectors = vectors
        self._root: dict[int, int] = {}
        hashed = np.fromiter(self.hashes, np.int64, len(self.hashes))
        stored = np.array(list(self.hashes.values()), np.int64).reshape(len(hashed), len(STORED_KINDS))
        self.hash_index = HashIndex.of_stored(hashed, stored)

    def root(self, image_id: int) -> int:
        """The original a row descends from (itself for an original)."""
        seen, node = [], image_id
        while node not in self._root:
            parent = self.parent.get(node)
            if parent is None or parent in seen or parent not in self.parent:
                self._root[node] = node
                break
            seen.append(node)
            node = parent
        for n in seen:
            self._root[n] = self._root[node]
        return self._root[image_id]

    def vector(self, ids: np.ndarray) -> np.ndarray:
        return self.xb[np.searchsorted(self.ids, ids)]

    def has_vector(self, image_id: int) -> bool:
        i = np.searchsorted(self.ids, image_id)
        return bool(i < len(self.ids) and self.ids[i] == image_id)


def collect_pairs(
    catalog: Catalog,
    vectors: VectorIndex,
    options,
    pairs: int = DEFAULT_PAIRS,
    k: int = DEFAULT_K,
    randoms: int = DEFAULT_RANDOM,
    seed: int = 0,
    progress: bool = True,
    thresholds: Thresholds | None = None,
) -> Pairs:
    """Score sampled known variant pairs and hard + random non-pairs of the catalog; with the
    ``thresholds`` judging it until now, verify them as search would (``verified_evidence``)."""

    view = CatalogView(catalog, vectors)
    rng = np.random.default_rng(seed)
    variants = [
        i for i, p in view.parent.items() if p is not None and view.has_vector(i) and view.has_vector(p)
    ]
    if not variants:
        raise ValueError(
            "the catalog has no known variant pairs with vectors:"
            " run `twice augment` and `twice reindex` first"
        )
    variants = sorted(rng.choice(variants, size=min(pairs, len(variants)), replace=False).tolist())
    originals = [i for i in view.stored if view.parent.get(i) is None and view.has_vector(i)]
    extra = rng.choice(originals, size=min(len(originals), max(1, len(variants) // 2)), replace=False)
    queries = sorted(set(variants) | set(extra.tolist()))
    store = ImageStore(options.images_dir)
    dataset = StoredViews([(i, store.path(view.stored[i])) for i in queries], options)
    workers = options.workers if len(queries) >= 4 * options.batch_size else 0
    result = _PairCollector(view, k, randoms, rng)
    bar = tqdm(total=len(queries), desc="scoring pairs", unit="img", disable=not progress)
    for batch in iter_batches(dataset, options.batch_size, workers):
        good = [item for item in batch if "error" not in item]
        for item in batch:
            if "error" in item:
                result.skipped[item["error"].reason] += 1
                LOG.warning("skipped query image %d: %s", item["id"], item["error"])
        if good:
            ids = [g["id"] for g in good]
            result.add_batch(ids, np.stack([g["hashes"] for g in good]), [g["structure"] for g in good])
        bar.update(len(batch))
    bar.close()
    scored = result.scored()
    if thresholds is not None and len(scored):
        verifier = PairVerifier(options, catalog)
        left, right = np.asarray(result.left, np.int64), np.asarray(result.right, np.int64)
        scored = verified_evidence(scored, left, right, verifier, thresholds, progress)
    return one_per_family(scored, result.family_keys())


class _PairCollector:
    """Accumulates the positive and negative pairs of batches of query images."""

    def __init__(self, view: CatalogView, k: int, randoms: int, rng: np.random.Generator) -> None:
        self.view, self.k, self.randoms, self.rng = view, k, randoms, rng
        self.left: list[int] = []
        self.right: list[int] = []
        self.labels: list[bool] = []
        self.query_hashes: dict[int, np.ndarray] = {}
        self.query_structure: dict[int, int] = {}
        self.best_other: dict[int, float] = {}
        self.context: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}  # query -> roots, scores, floor
        self.skipped: Counter = Counter()
        self.all_ids = np.fromiter(view.stored, np.int64)
        self.all_ids = self.all_ids[np.isin(self.all_ids, view.ids)]
        self.family_size = Counter(view.root(i) for i in view.stored)

    def add_batch(self, ids: list[int], hashes: np.ndarray, structures: list[int]) -> None:
        view = self.view
        xq = view.vector(np.asarray(ids, np.int64))
        # Deep enough that a third family shows up after the query's and another's.
        depth = min(len(view.ids), self.k + 2 * max(self.family_size.values()))
        D, I = view.vectors.search(xq, depth)
        for row, (image_id, qh, structure) in enumerate(zip(ids, hashes, structures, strict=True)):
            if is_flat(qh[0]) or image_id in view.flat:
                self.skipped["flat"] += 1
                continue
            self.query_hashes[image_id] = qh
            self.query_structure[image_id] = structure
            # What search compares each score with: the best one among the other images.
            others_found = (I[row] >= 0) & (I[row] != image_id)
            self.best_other[image_id] = float(D[row][others_found].max()) if others_found.any() else 1.0
            found = I[row] >= 0
            floor = float(D[row][-1]) if found.all() and depth < len(view.ids) else -1.0
            roots = np.array([view.root(int(j)) for j in I[row][found]], np.int64)
            self.context[image_id] = (roots, D[row][found].astype(np.float64), floor)
            root = view.root(image_id)
            parent = view.parent.get(image_id)
            if parent is not None and view.has_vector(parent) and parent not in view.flat:
                self._add(image_id, parent, True)
            others = [int(j) for j in I[row] if j >= 0 and view.root(int(j)) != root][: self.k]
            matches = view.hash_index.search(qh, MAX_RADIUS)
            others += [m.id for m in matches if view.root(m.id) != root][: self.k]
            for j in self.rng.choice(self.all_ids, size=min(len(self.all_ids), self.randoms), replace=False):
                if view.root(int(j)) != root:
                    others.append(int(j))
            for j in dict.fromkeys(others):
                if view.has_vector(j) and j not in view.flat:
                    self._add(image_id, j, False)

    def _add(self, query: int, other: int, label: bool) -> None:
        self.left.append(query)
        self.right.append(other)
        self.labels.append(label)

    def pairs(self) -> Pairs:
        """The scored pairs, a query's negatives merged per other family (``one_per_family``)."""
        return one_per_family(self.scored(), self.family_keys())

    def family_keys(self) -> np.ndarray:
        """Per pair, which (query, other family) it belongs to: -1 for a known variant pair."""
        keys = {}
        out = np.full(len(self.left), -1, np.int64)
        for n, (a, b, label) in enumerate(zip(self.left, self.right, self.labels, strict=True)):
            if not label:
                out[n] = keys.setdefault((a, self.view.root(b)), len(keys))
        return out

    def scored(self) -> Pairs:
        """Every collected pair scored on its own, in collection order (``left``, ``right``)."""
        view = self.view
        left, right = np.asarray(self.left, np.int64), np.asarray(self.right, np.int64)
        cnn = np.einsum("ij,ij->i", view.vector(left), view.vector(right)) if len(left) else np.zeros(0)
        dist = np.full(len(left), NO_HASH, np.int64)
        for n, (a, b) in enumerate(zip(left.tolist(), right.tolist(), strict=True)):
            stored = view.hashes.get(b)
            if stored is not None:
                dist[n] = int(view_distances(self.query_hashes[a][None], stored[None])[0])
        pairs = zip(left.tolist(), self.labels, strict=True)
        transforms = [view.transform.get(a) if label else None for a, label in pairs]
        best = np.array([self.best_other[a] for a in left.tolist()], np.float64)
        gap = np.maximum(best - cnn, 0.0) if len(left) else np.zeros(0)
        pairs = zip(left.tolist(), right.tolist(), strict=True)
        third = np.array([self._third_family(a, b) for a, b in pairs], np.float64)
        margin = cnn - third if len(left) else np.zeros(0)
        structure = np.array([self.query_structure[a] for a in left.tolist()], np.int64)
        return Pairs(
            np.asarray(self.labels, bool), cnn.astype(np.float64), dist, transforms, self.skipped,
            len(self.query_hashes), gap, margin.astype(np.float64), structure,
        )  # fmt: skip

    def _third_family(self, query: int, other: int) -> float:
        """The query's best score over images of neither its family nor ``other``'s: beyond the
        searched depth, no image scores above its last score."""
        roots, scores, floor = self.context[query]
        third = (roots != self.view.root(query)) & (roots != self.view.root(other))
        return float(scores[third].max()) if third.any() else floor


def one_per_family(pairs: Pairs, keys: np.ndarray) -> Pairs:
    """Known variant pairs as they are; the negatives of one key (a query and another family)
    merged into one pair that fires whenever any of them would: the highest CNN score and
    margin, the smallest hash distance and gap. Every rule ``twice calibrate`` fits is an "or"
    of "score >= t" and "distance <= h" parts, so the merged pair is exact for it."""
    keep = keys < 0
    if keep.all():
        return pairs
    groups, first, inverse = np.unique(keys[~keep], return_index=True, return_inverse=True)
    negatives = np.flatnonzero(~keep)

    def merged(values: np.ndarray | None, ufunc) -> np.ndarray | None:
        if values is None:
            return None
        out = values[negatives[first]].copy()
        ufunc.at(out, inverse, values[negatives])
        return np.concatenate([values[keep], out])

    labels = np.concatenate([pairs.labels[keep], np.zeros(len(groups), bool)])
    transforms = [t for t, k in zip(pairs.transforms, keep, strict=True) if k] + [None] * len(groups)
    structure = None if pairs.structure is None else np.concatenate(
        [pairs.structure[keep], pairs.structure[negatives[first]]]
    )  # fmt: skip
    return Pairs(
        labels, merged(pairs.cnn, np.maximum), merged(pairs.dist, np.minimum), transforms, pairs.skipped,
        pairs.queries, merged(pairs.gap, np.minimum), merged(pairs.margin, np.maximum), structure,
        merged(pairs.rule_cnn, np.maximum), merged(pairs.rule_dist, np.minimum),
        merged(pairs.rule_margin, np.maximum), pairs.verified_with,
    )  # fmt: skip


# the command ----------------------------------------------------------------------------------


def transform_name(spec: str | None) -> str:
    """``bright:60`` -> ``bright``, a chain ``tilt:10:black+jpeg:30`` -> ``tilt+jpeg``; variants of
    variants keep their last step."""
    last = (spec or "unknown").split(",")[-1]
    return "+".join(step.split(":")[0] for step in last.split("+"))


def recall_by_transform(pairs: Pairs, point: OperatingPoint) -> dict[str, float]:
    cnn, dist, margin = pairs.rule_evidence()
    fired = point.fires(cnn, strong_distances(dist, pairs.structure), margin)
    totals, hits = Counter(), Counter()
    for label, spec, hit in zip(pairs.labels, pairs.transforms, fired, strict=True):
        if label:
            name = transform_name(spec)
            totals[name] += 1
            hits[name] += bool(hit)
    return {name: round(hits[name] / totals[name], 4) for name in sorted(totals)}


def plot_curves(pairs: Pairs, fit: Fit, path: Path, title: str) -> Path:
    """Precision/recall of the CNN alone, the hash alone and the combined rule, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    positives = max(int(pairs.labels.sum()), 1)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for label, hash_max in (("CNN alone", HASH_OFF), (f"hash <= {fit.duplicate.hash_max} or CNN", None)):
        h = fit.duplicate.hash_max if hash_max is None else hash_max
        _, tp, fp = curve(pairs.labels, pairs.cnn, pairs.dist, h)
        ax.plot(tp / positives, tp / np.maximum(tp + fp, 1), label=label)
    never = 1.0 + 1e-9  # a CNN threshold no score reaches
    hash_points = [curve(pairs.labels, pairs.cnn, pairs.dist, h, never) for h in range(MAX_RADIUS + 1)]
    tp = np.array([p[1][0] for p in hash_points])
    fp = np.array([p[2][0] for p in hash_points])
    ax.plot(tp / positives, tp / np.maximum(tp + fp, 1), "o-", ms=3, label="hash alone (0..15 bits)")
    for name, point, marker in (("duplicate", fit.duplicate, "*"), ("similar", fit.similar, "s")):
        ax.plot(point.recall, point.precision, marker, ms=12, label=f"{name}: {_rule_text(point)}")
    ax.axhline(fit.duplicate.target, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="recall (known variant pairs)", ylabel="precision", title=title, xlim=(0, 1.02))
    ax.set_ylim(min(0.5, ax.get_ylim()[0]), 1.01)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _rule_text(point: OperatingPoint) -> str:
    rule = rule_text(point.hash_max, point.cnn_min, point.clear_score, point.clear_margin)
    return f"{rule} (P {point.precision:.3f}, R {point.recall:.3f})"


@dataclass
class Calibration:
    model_version: str
    fit: Fit
    pairs: Pairs
    plot: Path | None
    stored: bool
    before: Thresholds | None = None  # what judged this collection until now (shipped or stored)

    def change(self) -> dict | None:
        """Duplicate precision and recall on these pairs under the rule before and after."""
        if self.before is None:
            return None
        after = self.fit.thresholds()
        return {
            "before": {"source": self.before.source, **rule_scores(self.before, self.pairs)},
            "after": rule_scores(after, self.pairs),
        }

    def details(self) -> dict:
        labels = self.pairs.labels
        return {
            "hash_duplicate": self.fit.duplicate.hash_max,
            "hash_similar": self.fit.similar.hash_max,
            "clear_score": self.fit.duplicate.clear_score,
            "clear_margin": self.fit.duplicate.clear_margin,
            "duplicate": self.fit.duplicate.to_dict(),
            "similar": self.fit.similar.to_dict(),
            "positives": int(labels.sum()),
            "negatives": int((~labels).sum()),
            "queries": self.pairs.queries,
            "skipped": dict(self.pairs.skipped),
            "recall_by_transform": recall_by_transform(self.pairs, self.fit.duplicate),
            "verification": verification_counts(self.pairs),
            "weights": self.fit.weights.to_dict(),
            "plot": str(self.plot) if self.plot else None,
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "change": self.change(),
        }

    def lines(self) -> list[str]:
        d, s = self.fit.duplicate, self.fit.similar
        labels = self.pairs.labels
        out = [
            f"model {self.model_version}: {int(labels.sum())} known variant pairs,"
            f" {int((~labels).sum())} non-pairs from {self.pairs.queries} query images",
            f"duplicate: {_rule_text(d)}" + ("" if d.target_met else f"  (target {d.target} NOT reached)"),
            f"similar:   {_rule_text(s)}" + ("" if s.target_met else f"  (target {s.target} NOT reached)"),
            "duplicate recall by transform: "
            + ", ".join(f"{k} {v:.2f}" for k, v in recall_by_transform(self.pairs, d).items()),
        ]
        if (counts := verification_counts(self.pairs)) is not None:
            out.append(
                f"verified as search verifies: {counts['verified_pairs']} known pairs and"
                f" {counts['verified_non_pairs']} non-pairs are duplicates whatever the cuts (left"
                f" out of the fit, counted in its figures); CNN matches demoted:"
                f" {counts['cnn_demoted_non_pairs']} non-pairs, {counts['cnn_demoted_pairs']} known pairs"
            )
        if self.plot:
            out.append(f"precision/recall curves: {self.plot}")
        change = self.change()
        if change is not None:
            b, a = change["before"], change["after"]
            out.append(
                f"on these pairs, {b['source']} thresholds -> fitted: duplicate precision"
                f" {b['precision']:.3f} -> {a['precision']:.3f},"
                f" recall {b['recall']:.3f} -> {a['recall']:.3f}"
            )
        out.append("thresholds stored" if self.stored else "dry run: thresholds NOT stored")
        return out


def calibrate(
    options,
    precision: float = DEFAULT_PRECISION,
    similar_precision: float = DEFAULT_SIMILAR_PRECISION,
    pairs: int = DEFAULT_PAIRS,
    k: int = DEFAULT_K,
    randoms: int = DEFAULT_RANDOM,
    seed: int = 0,
    plot: Path | None = None,
    store: bool = True,
    progress: bool = True,
    shipped: dict | None = None,
    verify: bool = True,
) -> Calibration:
    """Fit and (unless ``store`` is False) store the thresholds of the indexed model version.

    ``shipped`` is the rule the model's checkpoint ships with: with the stored one, what the
    result compares the fit against. ``verify`` False fits on the CNN and the hash alone, as if
    search did not verify (faster; the fit then charges search's demoted look-alikes to the CNN)."""
    precision = check_precision(precision)
    similar_precision = check_precision(similar_precision, "similar precision")
    if pairs < 1 or k < 1 or randoms < 0:
        raise ValueError(f"pairs and k must be >= 1 and randoms >= 0, got {pairs}, {k}, {randoms}")
    index_path = Path(options.index_path)
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path}: no index yet; run `twice reindex` first")
    header = VectorIndex.read_header(index_path)
    version = header["model_version"]
    vectors = load_vectors_for_search(options, version, header["dim"])
    catalog = Catalog(options.catalog_url)
    try:
        before = thresholds_for(catalog, version, shipped)
        judged = before if verify else None
        scored = collect_pairs(catalog, vectors, options, pairs, k, randoms, seed, progress, judged)
        fit = fit_pairs(scored, precision, similar_precision)
        plot = plot or Path(options.reports_dir) / f"calibration-{version}.png"
        plot_curves(scored, fit, plot, f"twice calibrate: {version}")
        result = Calibration(version, fit, scored, plot, store, before)
        if store:
            t = fit.thresholds()
            catalog.set_thresholds(version, t.duplicate, t.similar, "calibrated", result.details())
    finally:
        catalog.close()
    return result
