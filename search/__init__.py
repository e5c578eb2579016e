"""Queries, verdicts and their thresholds; later: calibration and duplicate reports."""

from .engine import MAX_K, SearchEngine, check_k
from .verdicts import DIFFERENT, DUPLICATE, SIMILAR, Thresholds, thresholds_for

__all__ = [
    "DIFFERENT",
    "DUPLICATE",
    "MAX_K",
    "SIMILAR",
    "SearchEngine",
    "Thresholds",
    "check_k",
    "thresholds_for",
]
