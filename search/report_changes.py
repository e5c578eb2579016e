"""What changed since the last recorded report (table ``report_runs``), and recording this one."""

from __future__ import annotations

import logging
from collections import Counter

from sqlalchemy import func, select

from twice.indexer import Catalog, ImageRow
from twice.indexer.schema import ReportRun

from .report_scan import DuplicateScan

LOG = logging.getLogger(__name__)


def last_run(catalog: Catalog) -> ReportRun | None:
    with catalog.session() as session:
        return session.scalar(select(ReportRun).order_by(ReportRun.id.desc()).limit(1))


def classify_groups(previous: list[list[int]], current: list[list[int]]) -> tuple[list[str], int]:
    """Per current group: new | grown | changed | unchanged; and how many old groups are gone."""
    owner = {i: n for n, group in enumerate(previous) for i in group}
    labels, touched_any = [], set()
    for group in current:
        touched = {owner[i] for i in group if i in owner}
        touched_any |= touched
        if not touched:
            labels.append("new")
        elif len(touched) == 1 and set(previous[next(iter(touched))]) == set(group):
            labels.append("unchanged")
        elif len(touched) == 1 and set(previous[next(iter(touched))]) < set(group):
            labels.append("grown")
        else:
            labels.append("changed")
    return labels, len(previous) - len(touched_any)


def describe_changes(
    catalog: Catalog, previous: ReportRun | None, scan: DuplicateScan, labels: list[str], gone: int
) -> dict | None:
    if previous is None:
        return None
    with catalog.session() as session:
        added = session.scalar(
            select(func.count()).select_from(ImageRow).where(ImageRow.added_at > previous.created_at)
        )
    counts = Counter(labels)
    return {
        "since": previous.created_at.isoformat(),
        "previous_model": previous.model_version,
        "model_changed": previous.model_version != scan.model_version,
        "previous_threshold": previous.threshold,
        "images_then": previous.images,
        "images_now": len(scan.ids),
        "images_added": int(added or 0),
        "groups_then": len(previous.groups),
        "groups_now": len(scan.groups),
        "new_groups": counts["new"],
        "grown_groups": counts["grown"],
        "changed_groups": counts["changed"],
        "unchanged_groups": counts["unchanged"],
        "gone_groups": gone,
    }


def record_run(catalog: Catalog, scan: DuplicateScan, report: dict) -> None:
    with catalog.session() as session:
        session.add(
            ReportRun(
                model_version=scan.model_version,
                threshold=scan.threshold,
                images=len(scan.ids),
                groups=scan.groups,
                summary=report["summary"],
            )
        )
