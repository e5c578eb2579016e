"""From ranked answers to figures: recall@k per transform and duplicate-verdict precision/recall.

A query is *predicted duplicate* when the method calls its top answer a duplicate. It is a true
positive only when it is a transformed copy and that top answer is its own original; every
other predicted duplicate (a negative, or a copy matched to the wrong image) is a false
positive. Recall counts true positives over all transformed copies.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Hit:
    path: Path
    score: float
    duplicate: bool
    decided_by: tuple[str, ...] = ()  # the signals behind a duplicate call, where a method says


@dataclass(frozen=True)
class QueryOutcome:
    """What one method answered for one query."""

    transform: str  # "negative" for never-indexed queries
    rank: int | None  # 1-based rank of the query's original among the answers; None if absent
    top_score: float | None
    top_duplicate: bool
    top_decided_by: tuple[str, ...] = ()

    @property
    def positive(self) -> bool:
        return self.transform != "negative"


@dataclass
class MethodScores:
    """One method's outcomes, its notes and its time."""

    name: str
    description: str
    outcomes: list[QueryOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    index_seconds: float = 0.0
    query_seconds: float = 0.0
    threshold: float | None = None  # the score at or above which it says duplicate
    rule: str | None = None  # the whole duplicate rule in words, when more than a score cut
    calibration_seconds: float = 0.0


def outcome_of(transform: str, original: Path | None, hits: list[Hit]) -> QueryOutcome:
    rank = next((i for i, hit in enumerate(hits, 1) if original is not None and hit.path == original), None)
    top = hits[0] if hits else None
    if top is None:
        return QueryOutcome(transform, rank, None, False)
    return QueryOutcome(transform, rank, top.score, top.duplicate, top.decided_by)


def recall_at(outcomes: list[QueryOutcome], k: int) -> float | None:
    positives = [o for o in outcomes if o.positive]
    if not positives:
        return None
    return sum(o.rank is not None and o.rank <= k for o in positives) / len(positives)


def duplicate_figures(outcomes: list[QueryOutcome]) -> dict:
    positives = [o for o in outcomes if o.positive]
    negatives = [o for o in outcomes if not o.positive]
    tp = sum(o.top_duplicate and o.rank == 1 for o in positives)
    wrong = [o for o in outcomes if o.top_duplicate and (not o.positive or o.rank != 1)]
    fp = len(wrong)
    negatives_flagged = sum(o.top_duplicate for o in negatives)
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / len(positives) if positives else None,
        "true_positives": tp,
        "false_positives": fp,
        "negatives_called_duplicate": negatives_flagged,
        "negative_false_rate": negatives_flagged / len(negatives) if negatives else None,
        "false_positives_by_signal": false_positives_by_signal(wrong),
    }


def false_positives_by_signal(wrong: list[QueryOutcome]) -> dict[str, int]:
    """How many wrong duplicate calls each combination of deciding signals made (``hash+cnn``:
    both said duplicate), so a lost point of precision can be traced to its signal."""
    counts = Counter("+".join(o.top_decided_by) for o in wrong if o.top_decided_by)
    return dict(counts.most_common())


def summarise(outcomes: list[QueryOutcome]) -> dict:
    """recall@1/@5 overall and per transform, plus the duplicate-verdict figures."""
    by_transform: dict[str, list[QueryOutcome]] = defaultdict(list)
    for o in outcomes:
        if o.positive:
            by_transform[o.transform].append(o)
    return {
        "queries": len(outcomes),
        "positives": sum(o.positive for o in outcomes),
        "negatives": sum(not o.positive for o in outcomes),
        "recall@1": recall_at(outcomes, 1),
        "recall@5": recall_at(outcomes, 5),
        "per_transform": {
            t: {"n": len(os), "recall@1": recall_at(os, 1), "recall@5": recall_at(os, 5)}
            for t, os in by_transform.items()
        },
        "duplicate": duplicate_figures(outcomes),
    }
