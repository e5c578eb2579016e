"""Queries, verdicts and their thresholds, calibration, and duplicate-group reports."""

from .engine import MAX_K, SearchEngine, check_k
from .report import build_report
from .verdicts import DIFFERENT, DUPLICATE, SIMILAR, Thresholds, thresholds_for

__all__ = [
    "DIFFERENT",
    "DUPLICATE",
    "MAX_K",
    "SIMILAR",
    "SearchEngine",
    "Thresholds",
    "build_report",
    "check_k",
    "thresholds_for",
]
