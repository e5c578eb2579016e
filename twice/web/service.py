"""The long-lived search service behind ``api.py``: one model, one index, one writer per process.

A web worker builds one ``SearchService`` and keeps it for its whole life:

- the embedder is built once, on first use (importing ``api`` never loads a model);
- reads (search, metadata, files) run concurrently from any number of threads;
- writes (uploads, deletes) take a thread lock and an inter-process file lock, so several
  workers on one data directory never overwrite each other's index saves;
- the saved index is reloaded when its file is replaced on disk (a finished ``twice reindex``
  or another worker's upload). The file is written to a temporary name and renamed, so a
  changed (inode, mtime, size) stamp is the signal and a half-written file is never read.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from twice.crawler import AddressPolicy, FetchConfig, Fetcher, Refused
from twice.files import ImageStore
from twice.hashing import dihedral_hashes
from twice.imageio import DecodedImage, ImageError, decode_image
from twice.indexer import Catalog, ImageRow, Indexer, IndexFileError, IndexMismatchError
from twice.search.engine import SearchEngine, check_k
from twice.search.verdicts import DUPLICATE, Thresholds, thresholds_for

LOG = logging.getLogger(__name__)

DEFAULT_FETCH_TIMEOUT = 10.0
MAX_REDIRECTS = 5
THUMB_SIZES = (16, 1024)  # smallest and largest thumbnail side a client may ask for
THRESHOLDS_TTL = 30.0  # seconds between re-reads of the calibrated thresholds
USER_AGENT = "twice-search/0.1 (image search service; fetches one URL a user submitted)"


class ServiceError(Exception):
    """A request the service cannot answer; ``status`` and ``code`` say how the API reports it."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class UrlRefused(BadRequest):
    code = "url_refused"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class FetchFailed(ServiceError):
    status, code = 422, "fetch_failed"


class NotReady(ServiceError):
    status, code = 503, "index_not_ready"


class ModelNotReady(NotReady):
    code = "model_not_ready"


@dataclass(frozen=True)
class FileStamp:
    """Identity of one version of a file: a rename changes the inode, a rewrite mtime or size."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(st.st_ino, st.st_mtime_ns, st.st_size)


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


class SearchService:
    """One embedder, one catalog, one loaded index and one writer, shared by a worker's threads."""

    def __init__(
        self,
        options,
        embedder=None,
        allow_private_urls: bool = False,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        self.options = options
        self.allow_private_urls = allow_private_urls
        self.fetch_timeout = fetch_timeout
        self.index_path = Path(options.index_path)
        self.lock_path = Path(options.data_dir) / ".service-write.lock"
        self.store = ImageStore(options.images_dir)
        self.started_at = time.time()
        self.reloads = 0
        self._embedder = embedder
        self._catalog: Catalog | None = None
        self._indexer: Indexer | None = None
        self._engine: SearchEngine | None = None
        self._stamp: FileStamp | None = None
        self._not_ready = "not opened yet"
        self._thresholds_at = 0.0
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._opened = False

    # life cycle -----------------------------------------------------------------------------

    def open(self) -> SearchService:
        """Build the embedder and load the index (idempotent; called lazily by every method)."""
        if self._opened:
            return self
        with self._open_lock:
            if not self._opened:
                if self._embedder is None:
                    self._embedder = self._build_embedder()
                self._catalog = Catalog(self.options.catalog_url)
                with self._write_lock:
                    self._load(FileStamp.of(self.index_path))
                self._opened = True
        return self

    def _build_embedder(self):
        from twice.model import Embedder  # torch and the weights: only when serving

        try:
            return Embedder.from_options(self.options)
        except Exception as exc:  # any failure here means "not ready", never a crash loop
            LOG.exception("cannot load the model")
            raise ModelNotReady(f"the model cannot be loaded: {exc}") from exc

    def close(self) -> None:
        with self._write_lock:
            if self._indexer is not None:
                self._indexer.close()
            if self._catalog is not None:
                self._catalog.close()
            self._indexer = self._engine = self._catalog = None
            self._opened = False

    @property
    def embedder(self):
        return self.open()._embedder

    @property
    def catalog(self) -> Catalog:
        return self.open()._catalog

    def refresh(self) -> None:
        """Reload the index if its file was replaced since it was read: one stat per call."""
        self.open()
        if FileStamp.of(self.index_path) != self._stamp:
            with self._write_lock:
                stamp = FileStamp.of(self.index_path)
                if stamp != self._stamp:
                    self._load(stamp)
        if time.monotonic() - self._thresholds_at > THRESHOLDS_TTL:
            self._refresh_thresholds()

    def _load(self, stamp: FileStamp | None) -> None:
        """(Re)open the writer and the engine over the index file as it is now."""
        try:
            indexer = Indexer(self.options, self._embedder.version, self._embedder.dim)
            indexer.vectors  # noqa: B018 - load now, so a damaged file is caught here
        except (IndexFileError, IndexMismatchError, OSError, ValueError) as exc:
            # Keep serving what we had: a damaged file is fixed by the next reindex.
            LOG.error("cannot load index %s: %s", self.index_path, exc)
            self._stamp = stamp
            if self._engine is None:
                self._not_ready = f"index cannot be loaded: {exc}"
            return
        previous = self._indexer
        self._use(indexer, stamp)
        if previous is not None and previous is not indexer:
            self.reloads += 1
            previous.close()
            LOG.info("reloaded index %s: %d vectors", self.index_path, len(indexer.vectors))

    def _use(self, indexer: Indexer, stamp: FileStamp | None) -> None:
        """Serve ``indexer``'s vectors (whose file has ``stamp``), or say why not."""
        self._indexer, self._stamp = indexer, stamp
        if stamp is None:
            self._engine, self._not_ready = None, "no index yet: run `twice reindex FOLDER` or POST /images"
        elif indexer.rebuilding:
            self._engine, self._not_ready = (
                None,
                (
                    f"the index on disk was built by another model, not {self._embedder.version}:"
                    " run `twice reindex` to re-embed the catalog"
                ),
            )
        else:
            indexer.vectors.to_gpu()
            self._engine = SearchEngine(
                self.options, self._catalog, indexer.vectors, self._embedder, Thresholds()
            )
            self._refresh_thresholds()
            self._not_ready = ""

    def _refresh_thresholds(self) -> None:
        self._thresholds_at = time.monotonic()
        engine = self._engine
        if engine is not None:
            engine.thresholds = thresholds_for(self._catalog, self._embedder.version)

    def engine(self) -> SearchEngine:
        """The current engine, after a reload check; ``NotReady`` when there is no usable index."""
        self.refresh()
        engine = self._engine
        if engine is None:
            raise NotReady(self._not_ready)
        return engine

    @property
    def ready(self) -> bool:
        try:
            self.engine()
        except NotReady:
            return False
        return True

    # reads ----------------------------------------------------------------------------------

    def search_bytes(self, data: bytes, k: int = 10, source: str = "<upload>") -> dict:
        k = check_k(k)
        return self.engine().search_bytes(data, k, source)

    def search_url(self, url: str, k: int = 10) -> dict:
        k = check_k(k)
        engine = self.engine()
        return engine.search_bytes(self.fetch(url), k, source=url)

    def search_id(self, image_id: int, k: int = 10) -> dict:
        k = check_k(k)
        engine = self.engine()
        row = self.get(image_id)
        data = self.read_file(row)
        result = engine.search_bytes(data, k, source=row.source)
        result["query"]["id"] = row.id
        return result

    def fetch(self, url: str) -> bytes:
        return fetch_url(url, self.options.max_image_bytes, self.fetch_timeout, self.allow_private_urls)

    def get(self, image_id: int) -> ImageRow:
        row = self.catalog.get(check_id(image_id))
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        return row

    def file_path(self, row: ImageRow) -> Path:
        path = self.store.path(row.stored_path)
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

    # writes ---------------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Indexer]:
        """The writer, under the thread lock and the data directory's write lock, index fresh."""
        self.open()
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock, open(self.lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self.refresh()  # another worker may have saved since our last look
                indexer = self._indexer
                if indexer is None or indexer.rebuilding:
                    raise NotReady(self._not_ready or "index is not writable")
                yield indexer
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _saved(self, indexer: Indexer) -> None:
        """Save, then take our own file as current so the next request does not reload it."""
        indexer.save()
        self._after_save(indexer)

    def _after_save(self, indexer: Indexer) -> None:
        stamp = FileStamp.of(self.index_path)
        if self._engine is None:
            self._use(indexer, stamp)  # the first save into an empty data directory
        else:
            self._stamp = stamp

    def add_bytes(self, data: bytes, source: str, **columns: object) -> dict:
        """Add one image and index it now; says whether it (or a duplicate of it) was there."""
        self.open()
        decoded = decode_image(data, source, self.options.max_image_bytes, self.options.max_image_pixels)
        with self.writing() as indexer:
            known = self.catalog.by_sha256(decoded.sha256)
            if known is not None:
                return self._added(known, created=False, match="exact", duplicate_of=None)
            xq, duplicate_of = self._embed_and_match(decoded)
            added = indexer.add_bytes(data, source, **columns)
            if added.created:
                indexer.add_vectors(np.array([added.row.id], dtype=np.int64), xq)
                self._saved(indexer)
            match = "exact" if not added.created else ("duplicate" if duplicate_of else None)
            return self._added(added.row, added.created, match, duplicate_of)

    def _embed_and_match(self, decoded: DecodedImage) -> tuple[np.ndarray, dict | None]:
        """The new image's vector, and the catalogued image that search calls its duplicate.

        The same evidence as a search (hash with its 8 views, CNN, calibrated verdict), so an
        upload of a turned or brightened copy is flagged whenever searching for it would say so.
        """
        engine = self._engine
        if engine is None:  # the first image of an empty data directory
            return self._embedder.embed_images([decoded.image]), None
        xq, views = engine.embed_views(decoded.image, engine.tta)
        results = engine.rank(decoded, xq, views, dihedral_hashes(decoded.image), k=1)
        duplicate_of = None
        if results and results[0]["verdict"] == DUPLICATE:
            top = results[0]
            duplicate_of = {
                "id": top["id"],
                "score": top["score"],
                "verdict": DUPLICATE,
                "evidence": top["evidence"],
            }
        return xq[:1], duplicate_of  # the first view is the image as it is

    def _added(self, row: ImageRow, created: bool, match: str | None, duplicate_of: dict | None) -> dict:
        return {
            "id": row.id,
            "created": created,
            "already_indexed": match is not None,
            "match": match,
            "duplicate_of": duplicate_of,
            "image": row.to_dict(),
        }

    def delete(self, image_id: int) -> ImageRow:
        """Remove an image from the catalog, the index and the image store."""
        image_id = check_id(image_id)
        with self.writing() as indexer:
            row = indexer.remove(image_id)
            if row is None:
                raise NotFound(f"no image with id {image_id}")
            self._after_save(indexer)  # Indexer.remove saved the index
            return row


def check_id(image_id: object) -> int:
    if isinstance(image_id, bool) or not isinstance(image_id, int | np.integer) or image_id < 1:
        raise BadRequest(f"id must be a positive integer, got {image_id!r}")
    return int(image_id)


__all__ = [
    "BadRequest",
    "FetchFailed",
    "FileStamp",
    "ModelNotReady",
    "NotFound",
    "NotReady",
    "SearchService",
    "ServiceError",
    "UrlRefused",
    "check_id",
    "fetch_url",
]
