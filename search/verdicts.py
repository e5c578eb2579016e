"""Verdicts from scores: ``duplicate`` >= t_dup > ``similar`` >= t_sim > ``different``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DUPLICATE, SIMILAR, DIFFERENT = "duplicate", "similar", "different"

# Used until `twice calibrate` fits thresholds for a model version.
DEFAULT_DUPLICATE = 0.90
DEFAULT_SIMILAR = 0.75


@dataclass(frozen=True)
class Thresholds:
    duplicate: float = DEFAULT_DUPLICATE
    similar: float = DEFAULT_SIMILAR
    source: str = "default"  # default | calibrated | manual

    def __post_init__(self) -> None:
        if not -1.0 <= self.similar <= self.duplicate <= 1.0:
            raise ValueError(
                f"thresholds must satisfy -1 <= similar <= duplicate <= 1, got"
                f" similar={self.similar}, duplicate={self.duplicate}"
            )

    def verdict(self, score: float) -> str:
        if score >= self.duplicate:
            return DUPLICATE
        if score >= self.similar:
            return SIMILAR
        return DIFFERENT

    def to_dict(self) -> dict:
        return asdict(self)


def thresholds_for(catalog, model_version: str) -> Thresholds:
    """The stored thresholds of a model version, or the defaults."""
    record = catalog.thresholds(model_version)
    if record is None:
        return Thresholds()
    return Thresholds(record.duplicate, record.similar, record.source)
