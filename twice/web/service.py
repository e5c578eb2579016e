"""The web service's view of a data directory: a ``twice.Library`` plus what only HTTP needs.

A web worker builds one ``SearchService`` and keeps it for its whole life. The library does
the work (model on first use, concurrent reads, locked writes, index reloads when the file
changes); this module adds fetching a URL a user submitted (through the crawler's guarded
fetcher), thumbnails, the JSON shapes of /health and /stats, and the HTTP status of every
error (``http_status``).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import time
from pathlib import Path

from PIL import Image
from sqlalchemy import func, select

from twice.crawler import AddressPolicy, FetchConfig, Fetcher, Refused
from twice.files import ImageStore, OutsideStore
from twice.imageio import ImageError, decode_image
from twice.indexer import ImageRow
from twice.indexer.schema import AuditRecord
from twice.library import (
    InvalidRequest,
    Library,
    LibraryError,
    ModelNotReady,
    NotFound,
    NotReady,
    check_id,
)
from twice.search.engine import check_k

LOG = logging.getLogger(__name__)

DEFAULT_FETCH_TIMEOUT = 10.0
MAX_REDIRECTS = 5
THUMB_SIZES = (16, 1024)  # smallest and largest thumbnail side a client may ask for
USER_AGENT = "twice-search/0.1 (image search service; fetches one URL a user submitted)"


class ServiceError(LibraryError):
    """A request the service cannot answer; ``status`` and ``code`` say how the API reports it."""

    status = 500
    code = "internal"


class BadRequest(ServiceError, InvalidRequest):
    status, code = 400, "bad_request"


class UrlRefused(BadRequest):
    code = "url_refused"


class FetchFailed(ServiceError):
    status, code = 422, "fetch_failed"


class StorageFull(ServiceError):
    status, code = 507, "storage_full"


# The library's errors, as HTTP reports them (checked in order: subclasses first).
LIBRARY_STATUS = ((NotReady, 503), (NotFound, 404), (InvalidRequest, 400))


def http_status(exc: LibraryError) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    return next((status for kind, status in LIBRARY_STATUS if isinstance(exc, kind)), 500)


# safe fetching -------------------------------------------------------------------------------

# crawler.Refused reasons that mean "the caller's URL is not allowed" (HTTP 400).
REFUSED_URL_REASONS = frozenset(
    {
        "bad_url",
        "scheme",
        "proxy",
        "metadata_address",
        "loopback_address",
        "link_local_address",
        "private_address",
        "reserved_address",
    }
)


def fetch_url(
    url: str,
    max_bytes: int,
    timeout: float = DEFAULT_FETCH_TIMEOUT,
    allow_private: bool = False,
) -> bytes:
    """GET one image URL with the crawler's guarded fetcher, for one user request.

    http(s) only, every redirect hop and every resolved address checked (private, loopback
    and link-local refused unless ``allow_private``; cloud metadata always), a byte cap and a
    time cap; no retries, no politeness delay, no robots.txt (a person asked for this URL).
    Raises ``UrlRefused`` (400), ``FetchFailed`` (422) or ``ImageError`` (too_large: 413,
    not_image: 415 for a body that is declared as something else).
    """
    if not isinstance(url, str) or not url.strip():
        raise UrlRefused(f"url must be a non-empty string, got {url!r}")
    config = FetchConfig(
        delay=0.0,
        timeout=timeout,
        max_seconds=3 * timeout,
        retries=0,
        max_redirects=MAX_REDIRECTS,
        max_image_bytes=max_bytes,
        user_agent=USER_AGENT,
        policy=AddressPolicy(allow_private=allow_private),
    )
    try:
        with Fetcher(config) as fetcher:
            return fetcher.get(url, kind="image", robots=False).content
    except Refused as exc:
        raise fetch_error(exc) from None


def fetch_error(exc: Refused) -> Exception:
    """The service error for a refused or failed fetch."""
    if exc.reason in REFUSED_URL_REASONS:
        hint = (
            ""
            if exc.reason in ("bad_url", "scheme", "proxy", "metadata_address")
            else (" (the server allows it with TWICE_ALLOW_PRIVATE_URLS=1)")
        )
        return UrlRefused(f"{exc}{hint}")
    if exc.reason == "too_large":
        return ImageError("too_large", exc.url, exc.detail)
    if exc.reason == "content_type":
        return ImageError("not_image", exc.url, exc.detail)
    return FetchFailed(str(exc))


# the service ---------------------------------------------------------------------------------


class SearchService(Library):
    """A worker's library, shared by its threads, with URL fetches and thumbnails."""

    def __init__(
        self,
        options,
        embedder=None,
        allow_private_urls: bool = False,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        super().__init__(options, embedder)
        self.allow_private_urls = allow_private_urls
        self.fetch_timeout = fetch_timeout
        self.store = ImageStore(options.images_dir)
        self.started_at = time.time()

    # reads ----------------------------------------------------------------------------------

    def search_bytes(self, data: bytes, k: int = 10, source: str = "<upload>") -> dict:
        k = check_k(k)
        return self.search_json(data, k, source=source)

    def search_url(self, url: str, k: int = 10) -> dict:
        k = check_k(k)
        self.engine()  # not ready: say so before fetching anything
        return self.search_json(self.fetch(url), k, source=url)

    def search_id(self, image_id: int, k: int = 10) -> dict:
        k = check_k(k)
        self.engine()
        row = self.get(image_id)
        result = self.search_json(self.read_file(row), k, source=row.source)
        result["query"]["id"] = row.id
        return result

    def add_bytes(self, data: bytes, source: str, **columns: object) -> dict:
        try:
            return self.add_image(data, source, **columns).to_dict()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            LOG.error("upload refused, the disk is full: %s", exc)  # the path, for the operator
            raise StorageFull("the server's disk is full: try again later") from None

    def fetch(self, url: str) -> bytes:
        return fetch_url(url, self.options.max_image_bytes, self.fetch_timeout, self.allow_private_urls)

    def file_path(self, row: ImageRow) -> Path:
        try:
            path = self.store.path(row.stored_path)
        except OutsideStore as exc:  # a damaged or planted row: never served
            LOG.warning("image %d: %s", row.id, exc)
            raise NotFound(f"image {row.id}: its stored file is not in the image store") from None
        if not path.is_file():
            raise NotFound(f"image {row.id}: stored file {row.stored_path} is missing")
        return path

    def read_file(self, row: ImageRow) -> bytes:
        return self.file_path(row).read_bytes()

    def thumbnail(self, row: ImageRow, size: int) -> bytes:
        """A JPEG no larger than ``size`` on its longer side (EXIF-upright, RGB)."""
        low, high = THUMB_SIZES
        if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
            raise BadRequest(f"thumbnail size must be an integer from {low} to {high}, got {size!r}")
        options = self.options
        image = decode_image(
            self.read_file(row), f"image {row.id}", options.max_image_bytes, options.max_image_pixels
        ).image
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    # the audit trail --------------------------------------------------------------------------

    def record_write(self, action: str, image: dict, created: bool, token: str, client: str) -> None:
        """Log one write in the catalog's audit table: who (a token's name), from where, what."""
        with self.catalog.session() as session:
            session.add(
                AuditRecord(
                    action=action,
                    image_id=image["id"],
                    sha256=image["sha256"],
                    created=created,
                    token=token,
                    client=client,
                )
            )
        LOG.info(
            "audit: %s image %s (sha256 %s) by %s from %s",
            action,
            image["id"],
            image["sha256"],
            token,
            client,
        )

    def added_by(self, row: ImageRow) -> dict | None:
        """Who added ``row`` through the service, and when (None: a reindex or a crawl did)."""
        query = (
            select(AuditRecord)
            .where(
                AuditRecord.image_id == row.id,
                AuditRecord.sha256 == row.sha256,  # not a deleted image whose id came back
                AuditRecord.action == "add",
                AuditRecord.created,
            )
            .order_by(AuditRecord.id.desc())
            .limit(1)
        )
        with self.catalog.session() as session:
            record = session.scalar(query)
            return record.to_dict() if record is not None else None

    def health(self) -> dict:
        """Model, index and version facts; ``status`` is ``ok`` or ``not_ready``."""
        from twice.version import __version__

        self.refresh()
        engine = self._engine
        indexer = self._indexer
        return {
            "status": "ok" if engine is not None else "not_ready",
            "reason": self._not_ready or None,
            "version": __version__,
            "model": self._embedder.describe(),
            "index": {
                "path": str(self.index_path),
                "vectors": len(indexer.vectors) if engine is not None and indexer else 0,
                "type": indexer.vectors.index_type if engine is not None and indexer else None,
                "gpu": bool(engine is not None and indexer and indexer.vectors.use_gpu),
                "reloads": self.reloads,
            },
            "pid": os.getpid(),
        }

    def stats(self) -> dict:
        """Counts over the catalog and the loaded index."""
        self.refresh()
        with self.catalog.session() as session:
            images = session.scalar(select(func.count()).select_from(ImageRow)) or 0
            variants = session.scalar(select(func.count()).where(ImageRow.transform.is_not(None))) or 0
            total_bytes = session.scalar(select(func.coalesce(func.sum(ImageRow.bytes), 0))) or 0
            by_format = select(ImageRow.format, func.count()).group_by(ImageRow.format)
            formats = dict(session.execute(by_format).all())
        indexer, engine = self._indexer, self._engine
        vectors = len(indexer.vectors) if indexer is not None and engine is not None else 0
        stamp = self._stamp
        return {
            "images": images,
            "originals": images - variants,
            "variants": variants,
            "bytes": int(total_bytes),
            "formats": formats,
            "vectors": vectors,
            "pending": max(0, images - vectors) if engine is not None else images,
            "index_file_bytes": stamp.size if stamp else 0,
            "model": self._embedder.version,
            "thresholds": engine.thresholds.to_dict() if engine is not None else None,
            "ready": engine is not None,
            "reloads": self.reloads,
            "uptime_s": round(time.time() - self.started_at, 1),
        }


__all__ = [
    "BadRequest",
    "FetchFailed",
    "ModelNotReady",
    "NotFound",
    "NotReady",
    "SearchService",
    "ServiceError",
    "UrlRefused",
    "check_id",
    "fetch_url",
    "http_status",
]
