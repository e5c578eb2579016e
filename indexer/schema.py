"""Every table of the catalog database, in one place; ``indexer/migrations`` creates them.

Modules above the indexer (crawler, search) keep their rows here so that which tables exist
never depends on what happened to be imported. A change here needs a new migration
(``tests/test_migrations.py`` compares the two).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


# catalog ------------------------------------------------------------------------------------


class ImageRow(Base):
    """One stored image: an original, or a variant made from one (``parent_id``, ``transform``)."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    stored_path: Mapped[str] = mapped_column(String)  # relative to the image store
    source: Mapped[str] = mapped_column(String)  # original path or URL
    page_url: Mapped[str | None] = mapped_column(String, default=None)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), default=None, index=True
    )
    transform: Mapped[str | None] = mapped_column(String, default=None)
    meta: Mapped[dict | None] = mapped_column(JSON, default=None)  # alt text, tags, crawl ids
    # 64-bit DCT perceptual hash as a signed integer (search.hashing); NULL until computed.
    phash: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # twice.hashing.HASH_VERSION that made ``phash``; reindex recomputes hashes of older ones.
    phash_version: Mapped[int | None] = mapped_column(Integer, default=None)
    # The hashes of the image brightened and darkened as augment's ``bright`` and ``dark``
    # (search.hashing.STORED_VIEWS): a clipped copy is near these when far from ``phash``.
    # NULL where that view is flat, or until computed (hash version 3 on).
    phash_bright: Mapped[int | None] = mapped_column(BigInteger, default=None)
    phash_dark: Mapped[int | None] = mapped_column(BigInteger, default=None)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "path": self.stored_path,
            "source": self.source,
            "page_url": self.page_url,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "bytes": self.bytes,
            "parent_id": self.parent_id,
            "transform": self.transform,
            "meta": self.meta,
            "added_at": self.added_at.isoformat() if self.added_at else None,
        }


class SourceFile(Base):
    """A file ``twice reindex`` has read: its size and mtime then, and the sha256 of its bytes.
    While both are unchanged (and the sha256 still catalogued) a re-run skips it unread."""

    __tablename__ = "source_files"

    path: Mapped[str] = mapped_column(String, primary_key=True)  # absolute
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class IndexRecord(Base):
    """What the saved vector index holds; written only after the index file is durable."""

    __tablename__ = "index_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    index_type: Mapped[str] = mapped_column(String)
    vector_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ThresholdRecord(Base):
    """Verdict thresholds of one model version (defaults until calibrated)."""

    __tablename__ = "thresholds"

    model_version: Mapped[str] = mapped_column(String, primary_key=True)
    # Double spelled out: a bare Mapped[float] is Float under SQLAlchemy 2.0, Double under 2.1.
    duplicate: Mapped[float] = mapped_column(Double)
    similar: Mapped[float] = mapped_column(Double)
    source: Mapped[str] = mapped_column(String, default="default")
    details: Mapped[str | None] = mapped_column(String, default=None)  # JSON text
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# crawls (twice.crawler.records) -------------------------------------------------------------


class CrawlRecord(Base):
    """One crawl: what it lists, when it ran, what it found."""

    __tablename__ = "crawls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(40), index=True)
    listing: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="running")
    runs: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    found: Mapped[int] = mapped_column(Integer, default=0)
    downloaded: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[dict] = mapped_column(JSON, default=dict)  # reason -> count
    failed: Mapped[dict] = mapped_column(JSON, default=dict)  # reason -> count (retried on resume)
    last_run: Mapped[dict | None] = mapped_column(JSON, default=None)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "listing": self.listing,
            "status": self.status,
            "runs": self.runs,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "pages": self.pages,
            "found": self.found,
            "downloaded": self.downloaded,
            "duplicates": self.duplicates,
            "refused": self.refused,
            "failed": self.failed,
        }


class CrawlUrl(Base):
    """One page or image URL of a crawl and what became of it."""

    __tablename__ = "crawl_urls"
    __table_args__ = (UniqueConstraint("crawl_id", "kind", "url"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    crawl_id: Mapped[int] = mapped_column(ForeignKey("crawls.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # page | image
    url: Mapped[str] = mapped_column(String)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32), default=None)
    detail: Mapped[str | None] = mapped_column(String, default=None)
    image_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), default=None, index=True
    )
    page_url: Mapped[str | None] = mapped_column(String, default=None)  # images: where found
    next_url: Mapped[str | None] = mapped_column(String, default=None)  # pages: the next page
    page_number: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# reports (twice.search.report, twice.search.report_hashes) ----------------------------------


class PairCache(Base):
    """Pairs found at ``threshold`` or above among the vectors ``member_ids`` of one model."""

    __tablename__ = "report_pair_cache"

    model_version: Mapped[str] = mapped_column(String, primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    index_type: Mapped[str] = mapped_column(String)
    member_ids: Mapped[bytes] = mapped_column(LargeBinary)  # int64 catalog ids
    member_keys: Mapped[bytes] = mapped_column(LargeBinary)  # int64 from each sha256
    pair_a: Mapped[bytes] = mapped_column(LargeBinary)  # int64, a < b
    pair_b: Mapped[bytes] = mapped_column(LargeBinary)  # int64
    pair_score: Mapped[bytes] = mapped_column(LargeBinary)  # float32
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportRun(Base):
    """One recorded report: its groups, so the next report can say what changed."""

    __tablename__ = "report_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version: Mapped[str] = mapped_column(String)
    threshold: Mapped[float] = mapped_column(Float)
    images: Mapped[int] = mapped_column(Integer)
    groups: Mapped[list] = mapped_column(JSON)  # every group, as sorted id lists
    summary: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HashPairCache(Base):
    """Dihedral and stored photometric views of ``member_ids`` and their pairs within ``radius`` bits."""

    __tablename__ = "report_hash_cache"

    scheme: Mapped[str] = mapped_column(String, primary_key=True)
    radius: Mapped[int] = mapped_column(Integer)
    member_ids: Mapped[bytes] = mapped_column(LargeBinary)  # int64 catalog ids, sorted
    member_keys: Mapped[bytes] = mapped_column(LargeBinary)  # int64 from each sha256
    member_views: Mapped[bytes] = mapped_column(LargeBinary)  # int64, (members, VIEWS)
    pair_a: Mapped[bytes] = mapped_column(LargeBinary)  # int64, a < b
    pair_b: Mapped[bytes] = mapped_column(LargeBinary)  # int64
    pair_distance: Mapped[bytes] = mapped_column(LargeBinary)  # int8
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# the web service -------------------------------------------------------------------------------


class AuditRecord(Base):
    """One write through the web service: who (token name, never the token), from where, what."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(16))  # add | delete
    image_id: Mapped[int] = mapped_column(Integer, index=True)  # no foreign key: outlives a delete
    sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[bool] = mapped_column(Boolean)  # add: a new row; delete: always true
    token: Mapped[str] = mapped_column(String)  # the token's name; "local" for a tokenless local write
    client: Mapped[str] = mapped_column(String)  # client address as the service saw it

    def to_dict(self) -> dict:
        return {
            "at": self.at.isoformat() if self.at else None,
            "action": self.action,
            "token": self.token,
            "client": self.client,
        }
