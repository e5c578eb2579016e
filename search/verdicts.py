"""Verdicts from evidence: exact bytes, perceptual-hash distance and CNN cosine score.

CNN score alone: ``duplicate`` >= t_dup > ``similar`` >= t_sim > ``different``. Hash distance
alone (best of the query's 8 dihedral views, in bits of 64): ``duplicate`` <= h_dup <
``similar`` <= h_sim < ``different``. Together, the strongest signal wins: the same bytes are
always a duplicate, otherwise the higher of the hash verdict and the CNN verdict. ``twice
calibrate`` fits all four numbers for a target precision of that combined rule.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from .hashing import MAX_RADIUS

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


@dataclass(frozen=True)
class Judgement:
    """One verdict and the evidence behind it."""

    verdict: str
    cnn: str  # the CNN score's own verdict
    hash: str | None  # the hash distance's own verdict; None without hashes
    exact: bool

    @property
    def signals(self) -> list[str]:
        """The signals that fired (said duplicate or similar), strongest first."""
        fired = [("exact", DUPLICATE)] if self.exact else []
        fired += [("hash", self.hash)] if self.hash not in (None, DIFFERENT) else []
        fired += [("cnn", self.cnn)] if self.cnn != DIFFERENT else []
        return [name for name, verdict in sorted(fired, key=lambda f: RANK[f[1]])]

    @property
    def decided_by(self) -> list[str]:
        """The signals whose own verdict is the final one (empty for ``different``)."""
        if self.verdict == DIFFERENT:
            return []
        own = {"exact": DUPLICATE if self.exact else DIFFERENT, "hash": self.hash, "cnn": self.cnn}
        return [name for name in ("exact", "hash", "cnn") if own[name] == self.verdict]


@dataclass(frozen=True)
class Thresholds:
    duplicate: float = DEFAULT_DUPLICATE
    similar: float = DEFAULT_SIMILAR
    source: str = "default"  # default | calibrated | manual
    hash_duplicate: int = DEFAULT_HASH_DUPLICATE
    hash_similar: int = DEFAULT_HASH_SIMILAR

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

    def verdict(self, score: float) -> str:
        """The verdict of a CNN cosine score alone."""
        if score >= self.duplicate:
            return DUPLICATE
        if score >= self.similar:
            return SIMILAR
        return DIFFERENT

    def hash_verdict(self, distance: int | None) -> str | None:
        """The verdict of a hash Hamming distance alone; None when there is no distance."""
        if distance is None:
            return None
        if distance <= self.hash_duplicate:
            return DUPLICATE
        if distance <= self.hash_similar:
            return SIMILAR
        return DIFFERENT

    def judge(self, score: float, distance: int | None = None, exact: bool = False) -> Judgement:
        """The combined verdict: exact bytes, else the stronger of hash and CNN."""
        cnn, hashed = self.verdict(score), self.hash_verdict(distance)
        verdict = DUPLICATE if exact else min((cnn, hashed or DIFFERENT), key=RANK.__getitem__)
        return Judgement(verdict, cnn, hashed, exact)

    @property
    def hash_radius(self) -> int:
        """How far the hash lookup must reach to find every hash that can fire (-1: none)."""
        return self.hash_similar

    def to_dict(self) -> dict:
        return asdict(self)


def thresholds_for(catalog, model_version: str) -> Thresholds:
    """The stored thresholds of a model version, or the defaults."""
    record = catalog.thresholds(model_version)
    if record is None:
        return Thresholds()
    hashes = _hash_thresholds(record.details)
    try:
        return Thresholds(record.duplicate, record.similar, record.source, *hashes)
    except ValueError as exc:  # a hand-edited row must not take search down
        LOG.warning("ignoring stored hash thresholds of %s: %s", model_version, exc)
        return Thresholds(record.duplicate, record.similar, record.source)


def _hash_thresholds(details: str | None) -> tuple[int, int]:
    """The hash thresholds kept in a threshold record's details (JSON text)."""
    try:
        data = json.loads(details) if details else {}
        return int(data["hash_duplicate"]), int(data["hash_similar"])
    except (ValueError, KeyError, TypeError):
        return DEFAULT_HASH_DUPLICATE, DEFAULT_HASH_SIMILAR
