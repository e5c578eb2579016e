"""Crawl records, in the catalog's database: one row per crawl, one per URL it touched.

A crawl is identified by its listing (start URL and pagination, or search term) and its
filters; running the same command again finds the same crawl and skips every page and
image already done. Transient failures (timeouts, 5xx, rate limits) are tried again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter

from sqlalchemy import func, select

from twice.indexer import Catalog
from twice.indexer.catalog import upsert
from twice.indexer.schema import CrawlRecord, CrawlUrl, utcnow

LOG = logging.getLogger(__name__)

# URL states. Final ones are skipped when a crawl resumes; "failed" images are tried again,
# and so are "partial" pages (read, but some of their images failed).
STORED, DUPLICATE, REFUSED, FAILED = "stored", "duplicate", "refused", "failed"
DONE, PARTIAL = "done", "partial"
FINAL_STATES = frozenset({STORED, DUPLICATE, REFUSED, DONE})


def crawl_key(identity: dict) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class CrawlLog:
    """Reads and writes the records of one crawl; every write commits at once."""

    def __init__(self, catalog: Catalog, crawl_id: int) -> None:
        self.catalog = catalog
        self.crawl_id = crawl_id

    @classmethod
    def open(cls, catalog: Catalog, identity: dict, fresh: bool = False) -> tuple[CrawlLog, bool]:
        """The latest crawl of ``identity`` (resumed), or a new one; returns (log, resumed)."""
        key = crawl_key(identity)
        with catalog.session() as session:
            record = None
            if not fresh:
                record = session.scalar(
                    select(CrawlRecord).where(CrawlRecord.key == key).order_by(CrawlRecord.id.desc())
                )
            resumed = record is not None
            if record is None:
                record = CrawlRecord(key=key, listing=identity, refused={}, failed={})
                session.add(record)
            record.status, record.runs, record.finished_at = "running", (record.runs or 0) + 1, None
            session.flush()
            return cls(catalog, record.id), resumed

    def get(self, kind: str, url: str) -> CrawlUrl | None:
        with self.catalog.session() as session:
            return session.scalar(
                select(CrawlUrl).where(
                    CrawlUrl.crawl_id == self.crawl_id, CrawlUrl.kind == kind, CrawlUrl.url == url
                )
            )

    def is_done(self, kind: str, url: str) -> bool:
        row = self.get(kind, url)
        return row is not None and row.state in FINAL_STATES

    def record(self, kind: str, url: str, state: str, **columns: object) -> None:
        """Insert or update what became of ``url`` (one upsert: two crawlers of one listing
        recording one URL at once both count, neither fails)."""
        key = {"crawl_id": self.crawl_id, "kind": kind, "url": url}
        values = {**key, "state": state, "attempts": 1, "reason": None, "detail": None}
        with self.catalog.session() as session:
            upsert(
                session,
                CrawlUrl,
                {**values, "updated_at": utcnow(), **columns},
                list(key),
                changes={"attempts": CrawlUrl.attempts + 1},
            )

    def image_ids(self) -> list[int]:
        """Catalog ids of the images this crawl stored or found already stored."""
        with self.catalog.session() as session:
            ids = session.scalars(
                select(CrawlUrl.image_id).where(
                    CrawlUrl.crawl_id == self.crawl_id,
                    CrawlUrl.kind == "image",
                    CrawlUrl.image_id.is_not(None),
                )
            )
            return sorted(set(ids))

    def problems(self) -> list[CrawlUrl]:
        """The refused and failed URLs of this crawl, by reason."""
        with self.catalog.session() as session:
            return list(
                session.scalars(
                    select(CrawlUrl)
                    .where(CrawlUrl.crawl_id == self.crawl_id, CrawlUrl.state.in_((REFUSED, FAILED)))
                    .order_by(CrawlUrl.reason, CrawlUrl.id)
                )
            )

    def totals(self) -> dict:
        """Counts over every run of this crawl, from its URL records."""
        with self.catalog.session() as session:
            rows = session.execute(
                select(CrawlUrl.kind, CrawlUrl.state, CrawlUrl.reason, func.count())
                .where(CrawlUrl.crawl_id == self.crawl_id)
                .group_by(CrawlUrl.kind, CrawlUrl.state, CrawlUrl.reason)
            ).all()
        totals = {"pages": 0, "found": 0, "downloaded": 0, "duplicates": 0}
        refused, failed = Counter(), Counter()
        for kind, state, reason, n in rows:
            if kind == "page":
                totals["pages"] += n if state in (DONE, PARTIAL) else 0
            else:
                totals["found"] += n
                totals["downloaded"] += n if state == STORED else 0
                totals["duplicates"] += n if state == DUPLICATE else 0
            if state == REFUSED:
                refused[reason] += n
            elif state == FAILED:
                failed[reason] += n
        return {**totals, "refused": dict(refused), "failed": dict(failed)}

    def finish(self, status: str, last_run: dict) -> CrawlRecord:
        """Close this run: status, end time, totals and this run's own summary."""
        totals = self.totals()
        with self.catalog.session() as session:
            record = session.get(CrawlRecord, self.crawl_id)
            record.status, record.finished_at, record.last_run = status, utcnow(), last_run
            for name, value in totals.items():
                setattr(record, name, value)
            return record


def get_crawl(catalog: Catalog, crawl_id: int) -> CrawlRecord | None:
    with catalog.session() as session:
        return session.get(CrawlRecord, crawl_id)


def list_crawls(catalog: Catalog, limit: int = 20) -> list[CrawlRecord]:
    """The most recent crawls, newest first."""
    with catalog.session() as session:
        return list(session.scalars(select(CrawlRecord).order_by(CrawlRecord.id.desc()).limit(limit)))
