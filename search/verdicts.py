"""Verdicts from evidence: exact bytes, perceptual-hash distance and CNN cosine score.

CNN score alone: ``duplicate`` >= t_dup > ``similar`` >= t_sim > ``different``. Hash distance
alone (best of the query's 8 dihedral views, in bits of 64): ``duplicate`` <= h_dup <
``similar`` <= h_sim < ``different``. Together, the strongest signal wins: the same bytes are
always a duplicate, otherwise the higher of the hash verdict and the CNN verdict. ``twice
calibrate`` fits all four numbers for a target precision of that combined rule.

A CNN score under t_dup is still a duplicate when it stands clear of the query's other images:
score >= clear_score and score - (best score of any other family) >= clear_margin. This is
Lowe's ratio test as a difference. A copy that the model finds hard (a photo tilted 10 degrees
with white corners, at 0.6) is far above every other image of the catalog. An image that merely
resembles the query (another photo of the same kind of scene) has near rivals. Calibration fits
both numbers; until then the rule is off.

Results of one verdict are ranked by the weight of their evidence (``EvidenceWeights``): how
strongly each signal's value says "duplicate", as a log-likelihood ratio, summed over signals.
A lexicographic order (CNN score first, say) lets a signal that cannot tell images apart decide:
random CNN weights score every pair 0.99+, and a 0.0001 edge beat a 2-bit hash edge.

Two more signals can change a verdict:

- Structure (``twice.hashing.structure_of``: how many of the 64 hashed DCT coefficients stand a
  grey level or more from their median). A hash match on a low-structure image (under
  ``low_structure``) is weak evidence: its hash verdict says at most ``similar``, so it cannot
  alone make a ``duplicate`` (the CNN or verification still can). Measured on 798 openclipart
  drawings (seed 0) against scikit-image's 21 photographs and 60 synthetic scenes: 1,341 pairs
  of different drawings sit within 8 bits; at a cut of 20 strong coefficients 80.5% of those
  pairs have a low-structure side (16: 71.8%, 24: 82.7%), while 6 of 21 photographs (flat
  textures and low-contrast scans: moon, page, text, ...) and 5% of synthetic scenes fall under
  it; 29% of all drawings do. Copies of those images keep their CNN verdict.
- Local-feature verification (``inliers``: RANSAC inliers of a fitted geometric transform, None
  when it did not run or the images had too little detail to match). A verified match
  (``inliers >= verify_inliers``) with a CNN score at least ``verify_floor(inliers)`` is a
  duplicate: the floor is ``similar - verify_slack`` up to twice ``verify_inliers``, then
  ``VERIFY_SLACK_PER_DOUBLING`` lower per doubling of the inliers (at most ``MAX_DOUBLINGS``):
  crops that the CNN scores low keep hundreds of inliers, while wrong pairs that share a drawn
  part (cards of one deck) reach 8-27. A fit that reframes the picture (a crop, borders, a tilt)
  with ``REFRAMED_INLIERS`` or more needs no more than ``REFRAMED_FLOOR``; one that leaves it in
  place needs ``IN_PLACE_FACTOR`` times the inliers. A hash or CNN duplicate that verification ran on and
  found at most ``VERIFY_REJECT_INLIERS`` inliers is demoted to similar when its image has low
  structure (geometry is the only signal there that tells drawings apart) or when only the hash
  said duplicate and the CNN says different (different drawings whose hashes sit a few bits
  apart: the report's look-alike clip art). A duplicate of the CNN alone (no hash match at all)
  with fewer than ``verify_inliers`` inliers is demoted as well: look-alikes of one set (the
  letters S and s of a stamp set at 0.90). A copy too blurred to have keypoints is not verified
  at all (None) and keeps its verdict. The same bytes are always a duplicate.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field, fields

import numpy as np

from twice.hashing import MAX_RADIUS

LOG = logging.getLogger(__name__)

DUPLICATE, SIMILAR, DIFFERENT = "duplicate", "similar", "different"
RANK = {DUPLICATE: 0, SIMILAR: 1, DIFFERENT: 2}

# Used until `twice calibrate` fits thresholds for a model version.
DEFAULT_DUPLICATE = 0.90
DEFAULT_SIMILAR = 0.75
# Measured on the synthetic collection (augment.synthetic, 320x240): lossless turns and flips
# match at 0-2 bits, bright/dark/jpeg/blur/overlay at <= 14, different images at >= 14.
DEFAULT_HASH_DUPLICATE = 8
DEFAULT_HASH_SIMILAR = 12
HASH_OFF = -1  # a hash threshold that never fires
HASH_DISTANCES = 65  # 0..64 bits
CLEAR_OFF = 2.0  # a clear margin no cosine score can reach: the clear-match rule never fires
# Structure under which a hash match is weak evidence (see the module docstring's measurement).
DEFAULT_LOW_STRUCTURE = 20
# Verification: inliers that make a duplicate, and how far below `similar` the CNN may then be.
DEFAULT_VERIFY_INLIERS = 8
DEFAULT_VERIFY_SLACK = 0.15
# ... and how much further below for each doubling of the inliers beyond twice that many: more
# shared geometry needs less agreement in appearance. A crop to a third of the area scores
# 0.2-0.45 on the CNN while verification finds 25-265 inliers; wrong clip-art pairs (cards of one
# deck, jigsaw pieces, icons of one set sharing a part) reach 8-27 inliers at any score
# (docs/verification.md).
VERIFY_SLACK_PER_DOUBLING = 0.15
MAX_DOUBLINGS = 3  # 128 inliers and more lower it no further
# A fit that leaves the picture where it was (no crop, border or tilt) needs this many times
# ``verify_inliers``: it cannot explain a low CNN score (copies edited in place, brighter, grey,
# re-encoded, score high already), and different drawings of one set on the same frame (cards of
# one deck, jigsaw pieces of one cut) fit in place with 8-22 inliers. Measured on the bench
# (60 originals, 156 never-indexed drawings): 3 of them called duplicate -> 0, duplicate recall
# 0.934 -> 0.932 (stickers and captions with few inliers).
IN_PLACE_FACTOR = 3
# A fit that reframes the picture (crop, borders, tilt) with this many inliers is a duplicate
# at any CNN score from ``REFRAMED_FLOOR``: among 5,346 wrong candidate pairs of the bench (top-5
# of 1,140 copies and 156 never-indexed drawings) no reframed fit reached more than 9 inliers,
# while crops and screenshots the CNN scores 0.23-0.53 keep 11-55 (docs/verification.md).
REFRAMED_INLIERS = 12
REFRAMED_FLOOR = 0.2
VERIFY_REJECT_INLIERS = 2  # at most this many inliers: verification found no geometric match
# A fit that reframes the picture makes a duplicate only when the two images, aligned by it,
# agree (``search.verify.agreement``: the correlation of their grey levels inside the overlap)
# at least this well. Different drawings of one set (icons of one theme, pictograms, boats of
# one series) fit a shared part reframed and differ around it: 9 of the 22 never-indexed
# drawings that verification alone called duplicate agree 0.28-0.67; the 28 reframed clip-art
# copies it made duplicates agree from 0.71, and 1 of 182 reframed photo copies under the CNN
# cut less (0.60: two edits at once; ``search.verify`` aligns a similarity fit that agrees less
# than 0.9 by the fallback fit too). A fit in place is not held to it: an overlay or a sticker
# over a copy lowers its agreement to 0.24-0.58 (docs/verification.md).
REFRAMED_AGREEMENT = 0.7
# ... up to this many inliers: more shared geometry than wrong pairs of one set reach (up to
# 37 reframed) is a copy even where something covers part of it (a crop with a sticker or a
# caption over it keeps 299-338 inliers and agrees 0.56-0.61).
AGREEMENT_INLIERS = 64
THRESHOLD_SOURCES = ("default", "shipped", "calibrated", "manual")

# Default evidence weights, until calibration measures them: one bit of hash distance is one
# nat, and the CNN is scaled so that the gap between its default similar and duplicate
# thresholds (0.15) weighs as much as the gap between the hash ones (4 bits).
DEFAULT_NATS_PER_BIT = 1.0
DEFAULT_HASH_GAP = DEFAULT_HASH_SIMILAR - DEFAULT_HASH_DUPLICATE
DEFAULT_NATS_PER_SCORE = DEFAULT_NATS_PER_BIT * DEFAULT_HASH_GAP / (DEFAULT_DUPLICATE - DEFAULT_SIMILAR)
MAX_WEIGHT = 12.0  # nats: no single value is certain (e^12 ~ 160 000 : 1)
# Beyond ~16 bits the hash no longer ranks: unrelated images sit anywhere from 16 to 40 bits, so
# a crop that the CNN finds at 25 bits must not sink below strangers at 15. Calibrations on the
# bench measured the curve flattening at -4.3 to -4.8 nats; a steeper default (-12) lost a fifth
# of crop and tilt recall@1 with random weights.
DEFAULT_HASH_FLOOR = -4.0


@dataclass(frozen=True)
class EvidenceWeights:
    """How strongly a hash distance and a CNN score say "duplicate", in nats (log-likelihood ratio).

    ``hash`` has one weight per distance 0..64; ``cnn`` is linear between ``cnn_knots`` and flat
    outside them. A missing signal weighs 0. ``twice calibrate`` measures both from its pairs
    (``search.calibrate.fit_weights``); a CNN that cannot tell its pairs apart gets a flat curve
    and so no say in the order.
    """

    hash: tuple[float, ...]
    cnn_knots: tuple[float, ...]
    cnn: tuple[float, ...]
    source: str = "default"  # default | calibrated
    # The CNN score's gap below the query's best score among the other candidates: a CNN whose
    # scores do not separate pairs across queries (random weights: all 0.99+) may still rank the
    # original first within one. Flat (no say) unless calibrated.
    gap_knots: tuple[float, ...] = (0.0,)
    gap: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if len(self.hash) != HASH_DISTANCES:
            raise ValueError(f"hash weights need one value per distance 0..64, got {len(self.hash)}")
        for name, knots, weights in (("cnn", self.cnn_knots, self.cnn), ("gap", self.gap_knots, self.gap)):
            knots = np.asarray(knots, np.float64)
            if len(knots) < 1 or len(knots) != len(weights) or np.any(np.diff(knots) <= 0):
                raise ValueError(
                    f"{name} weights need ascending knots and one weight each, got {len(knots)} knots"
                    f" for {len(weights)} weights"
                )
        if not np.all(np.isfinite(np.r_[self.hash, self.cnn, self.cnn_knots, self.gap, self.gap_knots])):
            raise ValueError("evidence weights must be finite numbers")

    @classmethod
    def default(cls) -> EvidenceWeights:
        # 0 halfway between the similar cut and the next bit: positive where the hash fires.
        bits = DEFAULT_HASH_SIMILAR + 0.5 - np.arange(HASH_DISTANCES)
        hash_weights = np.clip(bits * DEFAULT_NATS_PER_BIT, DEFAULT_HASH_FLOOR, MAX_WEIGHT)
        knots = (-1.0, 1.0)
        return cls(
            tuple(hash_weights.tolist()),
            knots,
            tuple((k - DEFAULT_SIMILAR) * DEFAULT_NATS_PER_SCORE for k in knots),
        )

    def hash_weight(self, distance: int | None) -> float:
        return 0.0 if distance is None else self.hash[min(max(int(distance), 0), HASH_DISTANCES - 1)]

    def cnn_weight(self, score: float | None) -> float:
        return 0.0 if score is None else float(np.interp(score, self.cnn_knots, self.cnn))

    def gap_weight(self, gap: float | None) -> float:
        return 0.0 if gap is None else float(np.interp(gap, self.gap_knots, self.gap))

    def weight(self, score: float | None, distance: int | None, gap: float | None = None) -> float:
        """The evidence of the signals together (summed: they are treated as independent)."""
        return self.hash_weight(distance) + self.cnn_weight(score) + self.gap_weight(gap)

    def to_dict(self) -> dict:
        cnn_knots, cnn = _rounded_curve(self.cnn_knots, self.cnn, 6)
        gap_knots, gap = _rounded_curve(self.gap_knots, self.gap, 7)
        return {
            "hash": [round(w, 4) for w in self.hash],
            "cnn_knots": cnn_knots,
            "cnn": cnn,
            "gap_knots": gap_knots,
            "gap": gap,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvidenceWeights:
        return cls(
            tuple(float(w) for w in data["hash"]),
            tuple(float(k) for k in data["cnn_knots"]),
            tuple(float(w) for w in data["cnn"]),
            str(data.get("source", "calibrated")),
            tuple(float(k) for k in data.get("gap_knots", (0.0,))),
            tuple(float(w) for w in data.get("gap", (0.0,))),
        )


def _rounded_curve(knots, weights, digits: int) -> tuple[list[float], list[float]]:
    """A curve's knots rounded for storage, with the weight of the first of any knots that the
    rounding makes equal (random weights score pairs 1e-8 apart), so it loads back."""
    curve: dict[float, float] = {}
    for knot, weight in zip(knots, weights, strict=True):
        curve.setdefault(round(knot, digits), round(weight, 4))
    return list(curve), list(curve.values())


@dataclass(frozen=True)
class Judgement:
    """One verdict and the evidence behind it."""

    verdict: str
    cnn: str  # the CNN score's own verdict
    hash: str | None  # the hash distance's own verdict; None without hashes
    exact: bool
    clear: bool = False  # the CNN's duplicate came from the clear-match rule, not its score alone
    weak_hash: bool = False  # a hash duplicate on a low-structure image, counted as similar only
    verified: bool = False  # local-feature verification made the duplicate
    demoted: bool = False  # a duplicate verification found (too) little geometry for

    @property
    def signals(self) -> list[str]:
        """The signals that fired (said duplicate or similar), strongest first."""
        fired = [("exact", DUPLICATE)] if self.exact else []
        fired += [("hash", self.hash)] if self.hash not in (None, DIFFERENT) else []
        fired += [("cnn", self.cnn)] if self.cnn != DIFFERENT else []
        fired += [("verify", DUPLICATE)] if self.verified else []
        return [name for name, verdict in sorted(fired, key=lambda f: RANK[f[1]])]

    @property
    def decided_by(self) -> list[str]:
        """The signals whose own verdict is the final one (empty for ``different``)."""
        if self.verdict == DIFFERENT:
            return []
        own = {
            "exact": DUPLICATE if self.exact else DIFFERENT,
            "hash": self.hash,
            "cnn": self.cnn,
            "verify": DUPLICATE if self.verified else DIFFERENT,
        }
        return [name for name in ("exact", "verify", "hash", "cnn") if own[name] == self.verdict]


@dataclass(frozen=True)
class Thresholds:
    duplicate: float = DEFAULT_DUPLICATE
    similar: float = DEFAULT_SIMILAR
    source: str = "default"  # default | calibrated | manual
    hash_duplicate: int = DEFAULT_HASH_DUPLICATE
    hash_similar: int = DEFAULT_HASH_SIMILAR
    clear_score: float = 1.0
    clear_margin: float = CLEAR_OFF
    low_structure: int = DEFAULT_LOW_STRUCTURE
    verify_inliers: int = DEFAULT_VERIFY_INLIERS
    verify_slack: float = DEFAULT_VERIFY_SLACK
    # How results of one verdict are ordered; not part of the verdict rule (nor of equality).
    weights: EvidenceWeights = field(default_factory=EvidenceWeights.default, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not -1.0 <= self.similar <= self.duplicate <= 1.0:
            raise ValueError(
                f"thresholds must satisfy -1 <= similar <= duplicate <= 1, got"
                f" similar={self.similar}, duplicate={self.duplicate}"
            )
        if not HASH_OFF <= self.hash_duplicate <= self.hash_similar <= MAX_RADIUS:
            raise ValueError(
                f"hash thresholds must satisfy {HASH_OFF} <= hash_duplicate <= hash_similar"
                f" <= {MAX_RADIUS}, got hash_duplicate={self.hash_duplicate},"
                f" hash_similar={self.hash_similar}"
            )
        if not (-1.0 <= self.clear_score <= 1.0 and 0.0 <= self.clear_margin <= CLEAR_OFF):
            raise ValueError(
                f"the clear-match rule needs -1 <= clear_score <= 1 and 0 <= clear_margin <= {CLEAR_OFF},"
                f" got clear_score={self.clear_score}, clear_margin={self.clear_margin}"
            )
        if self.source not in THRESHOLD_SOURCES:
            raise ValueError(
                f"threshold source must be one of {', '.join(THRESHOLD_SOURCES)}, got {self.source!r}"
            )
        if not (0 <= self.low_structure <= 64 and self.verify_inliers > VERIFY_REJECT_INLIERS):
            raise ValueError(
                f"need 0 <= low_structure <= 64 and verify_inliers > {VERIFY_REJECT_INLIERS}, got"
                f" low_structure={self.low_structure}, verify_inliers={self.verify_inliers}"
            )
        if not 0.0 <= self.verify_slack <= 2.0:
            raise ValueError(f"verify_slack must be in [0, 2], got {self.verify_slack}")

    @property
    def clear_rule(self) -> bool:
        """Whether the clear-match rule can fire below the duplicate threshold."""
        return self.clear_margin < CLEAR_OFF and self.clear_score < self.duplicate

    def verdict(self, score: float, margin: float | None = None) -> str:
        """The verdict of a CNN cosine score, and of its margin over the query's other families."""
        if score >= self.duplicate or self.is_clear(score, margin):
            return DUPLICATE
        if score >= self.similar:
            return SIMILAR
        return DIFFERENT

    def is_clear(self, score: float, margin: float | None) -> bool:
        """Whether the clear-match rule makes a score a duplicate (None: margin unknown)."""
        return margin is not None and score >= self.clear_score and margin >= self.clear_margin

    def hash_verdict(self, distance: int | None) -> str | None:
        """The verdict of a hash Hamming distance alone; None when there is no distance."""
        if distance is None:
            return None
        if distance <= self.hash_duplicate:
            return DUPLICATE
        if distance <= self.hash_similar:
            return SIMILAR
        return DIFFERENT

    def is_low_structure(self, structure: int | None) -> bool:
        """Whether an image's hash is weak evidence (None: structure unknown, so not weak)."""
        return structure is not None and structure < self.low_structure

    def judge(
        self,
        score: float,
        distance: int | None = None,
        exact: bool = False,
        margin: float | None = None,
        structure: int | None = None,
        inliers: int | None = None,
        reframed: bool = True,
        featureless: bool = False,
        plain: bool = False,
        recoloured: bool = False,
        warped: bool = False,
        agreement: float | None = None,
    ) -> Judgement:
        """The combined verdict: exact bytes, else the strongest of hash, CNN and verification.

        ``structure`` is the lower of the pair's two structures (or the query's alone);
        ``inliers`` the verification's inlier count, None when it did not run; ``reframed``
        whether its fit moved the picture (a crop, borders, a tilt); ``featureless`` whether the
        pair had too few keypoints to be verified at all, ``plain`` whether the stored image
        itself had; ``recoloured`` whether both are in colour in different hues
        (``search.verify.verdict_signals`` gives the last six from a verification); ``warped``
        whether a fallback fit (an affine transform or a homography: a stretch, a keystone)
        verified the pair where the similarity fit did not; ``agreement`` how well the two
        images agree once aligned by the fit (None: not measured), which a reframing fit needs
        (``REFRAMED_AGREEMENT``) to make a duplicate.
        """
        cnn, hashed = self.verdict(score, margin), self.hash_verdict(distance)
        low = self.is_low_structure(structure)
        weak_hash = hashed == DUPLICATE and low
        if weak_hash:
            hashed = SIMILAR
        needed = self.verify_inliers * (1 if reframed else IN_PLACE_FACTOR)
        verified = (
            inliers is not None
            and inliers >= needed
            and score >= self.verify_floor(inliers, reframed)
            and not recoloured
            and not disagrees(inliers, reframed, agreement)
        )
        verdict = min((cnn, hashed or DIFFERENT), key=RANK.__getitem__)
        demoted = False
        if verified:
            verdict = DUPLICATE
        elif self._no_geometry(verdict, inliers) and (low or cnn == DIFFERENT):
            # A low-structure image, or a hash match the CNN disowns (different drawings whose
            # hashes sit a few bits apart), with no shared geometry is no duplicate. A photo the
            # CNN also calls a copy keeps it (a heavy blur has no keypoints to match).
            verdict, demoted = SIMILAR, True
        elif verdict == DUPLICATE and low and featureless:
            # Little detail: a low-structure image that verification cannot match either (thin
            # line drawings at icon size: 1,378 of openclipart's 8,121 are such stars, alike to
            # the CNN at 0.95-0.99 and to the hash at 0-2 bits). Only identical bytes or a
            # verified fit can say duplicate there.
            verdict, demoted = SIMILAR, True
        elif (
            verdict == DUPLICATE
            and hashed != DUPLICATE
            and not weak_hash
            and inliers is not None
            and inliers < self.verify_inliers
        ):
            # The CNN alone said duplicate (no hash match, not even a weak one) and verification,
            # with enough detail to match, found too little shared geometry: look-alikes of one
            # set (the letters S and s, N and Ñ). A fit in place with fewer inliers than a
            # verified duplicate needs still backs the CNN's duplicate.
            verdict, demoted = SIMILAR, True
        elif verdict == DUPLICATE and plain and hashed != DUPLICATE:
            # The stored image is too plain to verify anything against (a LED, a flag, an arrow:
            # under 12 keypoints) and only the CNN says duplicate: it calls plain shapes of one
            # kind alike (a red and an orange LED at 0.80, the flags of Yemen and Poland at
            # 1.000). A hash match still makes it.
            verdict, demoted = SIMILAR, True
        if demoted and warped and cnn == DUPLICATE:
            # The similarity fit found too little, but a stretched or perspective fit verified
            # (a keystone or a stretch with a tilt or crop is no similarity): it backs the CNN's
            # own duplicate. It makes none from a lower score (docs/verification.md).
            verdict, demoted = DUPLICATE, False
        if recoloured and verdict == DUPLICATE:
            # The same drawing in other colours (a red and a green button): no copy edit changes
            # hues, a grey copy has none to compare.
            verdict, demoted = SIMILAR, True
        if exact:
            verdict = DUPLICATE
        clear = cnn == DUPLICATE and score < self.duplicate
        return Judgement(
            verdict, cnn, hashed, exact, clear, weak_hash, verified and not exact, demoted and not exact
        )

    def verify_floor(self, inliers: int, reframed: bool = True) -> float:
        """The lowest CNN score that ``inliers`` verification inliers make a duplicate."""
        doublings = min(max(0.0, np.log2(inliers / (2 * self.verify_inliers))), MAX_DOUBLINGS)
        floor = self.similar - self.verify_slack - VERIFY_SLACK_PER_DOUBLING * float(doublings)
        if reframed and inliers >= REFRAMED_INLIERS:
            return min(floor, REFRAMED_FLOOR)
        return floor

    @staticmethod
    def _no_geometry(verdict: str, inliers: int | None) -> bool:
        """A duplicate that verification ran on and found (almost) nothing shared."""
        return verdict == DUPLICATE and inliers is not None and inliers <= VERIFY_REJECT_INLIERS

    def duplicate_rule(self) -> str:
        """The duplicate rule in one line, for people."""
        return rule_text(self.hash_duplicate, self.duplicate, self.clear_score, self.clear_margin)

    @property
    def hash_radius(self) -> int:
        """How far the hash lookup must reach to find every hash that can fire (-1: none)."""
        return self.hash_similar

    def to_dict(self) -> dict:
        """The verdict rule and where the ranking weights come from (not the curves themselves)."""
        rule = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "weights"}
        return rule | {"weights": self.weights.source}

    def to_shipped(self) -> dict:
        """What a checkpoint keeps (``shipped_thresholds`` reads it): the rule and the curves."""
        return self.to_dict() | {"weights_curves": self.weights.to_dict()}


def disagrees(inliers: int, reframed: bool, agreement: float | None) -> bool:
    """A reframing fit with few inliers whose aligned images do not agree (``REFRAMED_AGREEMENT``):
    it makes no duplicate."""
    few = inliers < AGREEMENT_INLIERS
    return reframed and few and agreement is not None and agreement < REFRAMED_AGREEMENT


def rule_text(
    hash_max: int, cnn_min: float, clear_score: float = 1.0, clear_margin: float = CLEAR_OFF
) -> str:
    """ "hash <= h or CNN >= t [or (CNN >= t1 and m clear of other images)]"."""
    parts = [f"hash <= {hash_max}"] if hash_max >= 0 else []
    # 1.0 means the CNN could not help (random weights, say): only the same pixels reach it.
    parts.append(f"CNN >= {cnn_min:.4f}" + (" (CNN alone: never)" if cnn_min >= 1.0 else ""))
    if clear_margin < CLEAR_OFF:
        parts.append(f"(CNN >= {clear_score:.4f} and {clear_margin:.4f} clear of other images)")
    return " or ".join(parts)


def thresholds_for(catalog, model_version: str, shipped: dict | None = None) -> Thresholds:
    """The stored thresholds of a model version; else the ones its model shipped with
    (``shipped``: ``Thresholds.to_dict`` plus ``"weights_curves"``, from the checkpoint), else
    the defaults."""
    record = catalog.thresholds(model_version)
    if record is None:
        return shipped_thresholds(shipped, model_version) if shipped else Thresholds()
    hashes = _hash_thresholds(record.details)
    clear = _clear_rule(record.details)
    extra = _extra_rules(record.details)
    weights = _weights(record.details, model_version)
    try:
        return Thresholds(
            record.duplicate, record.similar, record.source, *hashes, *clear, **extra, weights=weights
        )
    except ValueError as exc:  # a hand-edited row must not take search down
        LOG.warning("ignoring stored hash thresholds and clear-match rule of %s: %s", model_version, exc)
        return Thresholds(record.duplicate, record.similar, record.source, weights=weights)


def shipped_thresholds(data: dict, model_version: str) -> Thresholds:
    """Thresholds from a checkpoint's ``thresholds`` metadata; the defaults when it is unusable."""
    try:
        names = {f.name for f in fields(Thresholds)} - {"weights", "source"}
        rule = {name: data[name] for name in names & set(data)}
        weights = EvidenceWeights.from_dict(data["weights_curves"]) if "weights_curves" in data else None
        return Thresholds(**rule, source="shipped", **({"weights": weights} if weights else {}))
    except (ValueError, KeyError, TypeError) as exc:
        LOG.warning("ignoring the shipped thresholds of %s: %s", model_version, exc)
        return Thresholds()


def _extra_rules(details: str | None) -> dict:
    """Structure and verification rules kept in a threshold record's details (defaults otherwise)."""
    data = _details(details)
    kinds = {"low_structure": int, "verify_inliers": int, "verify_slack": float}
    out = {}
    for name, kind in kinds.items():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out[name] = kind(data[name])
    return out


def _details(details: str | None) -> dict:
    try:
        data = json.loads(details) if details else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _hash_thresholds(details: str | None) -> tuple[int, int]:
    """The hash thresholds kept in a threshold record's details (JSON text)."""
    data = _details(details)
    try:
        return int(data["hash_duplicate"]), int(data["hash_similar"])
    except (ValueError, KeyError, TypeError):
        return DEFAULT_HASH_DUPLICATE, DEFAULT_HASH_SIMILAR


def _clear_rule(details: str | None) -> tuple[float, float]:
    """The clear-match rule kept in a threshold record's details; off when there is none."""
    data = _details(details)
    try:
        return float(data["clear_score"]), float(data["clear_margin"])
    except (ValueError, KeyError, TypeError):
        return 1.0, CLEAR_OFF


def _weights(details: str | None, model_version: str) -> EvidenceWeights:
    """The evidence weights kept in a threshold record's details, or the defaults."""
    data = _details(details)
    if "weights" not in data:
        return EvidenceWeights.default()
    try:
        return EvidenceWeights.from_dict(data["weights"])
    except (ValueError, KeyError, TypeError) as exc:
        LOG.warning("ignoring stored evidence weights of %s: %s", model_version, exc)
        return EvidenceWeights.default()
