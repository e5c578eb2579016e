"""From ranked answers to figures: recall@k per edit, duplicate-verdict precision/recall, and a
95 % confidence interval on each (Wilson score interval: honest at 0 or n successes and for
the small counts a row of a benchmark has).

A query is *predicted duplicate* when the method calls its top answer a duplicate. It is a true
positive only when it is an edited copy and that top answer is its own original; every other
predicted duplicate (a negative, or a copy matched to the wrong image) is a false positive.
Recall counts true positives over all edited copies.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

NEGATIVE = "negative"  # the edit of a never-indexed query
Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


@dataclass(frozen=True)
class Hit:
    path: Path
    score: float
    duplicate: bool
    decided_by: tuple[str, ...] = ()  # the signals behind a duplicate call, where a method says


@dataclass(frozen=True)
class QueryOutcome:
    """What one method answered for one query."""

    edit: str  # the query's row: an edit family, a combo, a fixed transform, or NEGATIVE
    rank: int | None  # 1-based rank of the query's original among the answers; None if absent
    top_score: float | None
    top_duplicate: bool
    top_decided_by: tuple[str, ...] = ()

    @property
    def positive(self) -> bool:
        return self.edit != NEGATIVE

    @property
    def found_duplicate(self) -> bool:
        """A true positive: the original ranked first and called a duplicate."""
        return self.positive and self.rank == 1 and self.top_duplicate


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


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``k`` of ``n``; None when ``n`` is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return None
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(name: str, k: int, n: int) -> dict:
    """``{name: k/n, name_ci95: [low, high]}`` (None for both when ``n`` is 0)."""
    interval = wilson(k, n)
    return {name: k / n if n else None, f"{name}_ci95": list(interval) if interval else None}


def outcome_of(edit: str, original: Path | None, hits: list[Hit]) -> QueryOutcome:
    rank = next((i for i, hit in enumerate(hits, 1) if original is not None and hit.path == original), None)
    top = hits[0] if hits else None
    if top is None:
        return QueryOutcome(edit, rank, None, False)
    return QueryOutcome(edit, rank, top.score, top.duplicate, top.decided_by)


def found_at(outcomes: list[QueryOutcome], k: int) -> tuple[int, int]:
    """(copies whose original ranks in the top ``k``, copies)."""
    positives = [o for o in outcomes if o.positive]
    return sum(o.rank is not None and o.rank <= k for o in positives), len(positives)


def recall_at(outcomes: list[QueryOutcome], k: int) -> float | None:
    found, n = found_at(outcomes, k)
    return found / n if n else None


def recall_figures(outcomes: list[QueryOutcome]) -> dict:
    """recall@1, recall@5 and duplicate recall of the copies among ``outcomes``, with CIs."""
    positives = [o for o in outcomes if o.positive]
    n = len(positives)
    return {
        "n": n,
        **proportion("recall@1", found_at(positives, 1)[0], n),
        **proportion("recall@5", found_at(positives, 5)[0], n),
        **proportion("duplicate_recall", sum(o.found_duplicate for o in positives), n),
    }


def duplicate_figures(outcomes: list[QueryOutcome]) -> dict:
    positives = [o for o in outcomes if o.positive]
    negatives = [o for o in outcomes if not o.positive]
    tp = sum(o.found_duplicate for o in positives)
    wrong = [o for o in outcomes if o.top_duplicate and not o.found_duplicate]
    fp = len(wrong)
    negatives_flagged = sum(o.top_duplicate for o in negatives)
    return {
        **proportion("precision", tp, tp + fp),
        **proportion("recall", tp, len(positives)),
        "true_positives": tp,
        "false_positives": fp,
        "copies_matched_wrong": fp - negatives_flagged,
        "negatives_called_duplicate": negatives_flagged,
        **proportion("negative_false_rate", negatives_flagged, len(negatives)),
        "false_positives_by_signal": false_positives_by_signal(wrong),
    }


def false_positives_by_signal(wrong: list[QueryOutcome]) -> dict[str, int]:
    """How many wrong duplicate calls each combination of deciding signals made (``hash+cnn``:
    both said duplicate), so a lost point of precision can be traced to its signal."""
    counts = Counter("+".join(o.top_decided_by) for o in wrong if o.top_decided_by)
    return dict(counts.most_common())


def summarise(outcomes: list[QueryOutcome]) -> dict:
    """recall@1/@5 overall and per edit (each with its CI), plus the duplicate-verdict figures."""
    by_edit: dict[str, list[QueryOutcome]] = defaultdict(list)
    for o in outcomes:
        if o.positive:
            by_edit[o.edit].append(o)
    overall = recall_figures(outcomes)
    return {
        "queries": len(outcomes),
        "positives": overall.pop("n"),
        "negatives": sum(not o.positive for o in outcomes),
        **overall,
        "per_edit": {edit: recall_figures(os) for edit, os in by_edit.items()},
        "duplicate": duplicate_figures(outcomes),
    }
