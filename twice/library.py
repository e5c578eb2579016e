"""The Python API: open a data directory, add images, search, list the duplicate groups.

    import twice

    with twice.open("index_data") as library:
        library.add(["photos/"])
        for match in library.search("query.jpg", k=5).results:
            print(match.verdict, round(match.score, 3), match.source)
        groups = library.duplicates()

Results are dataclasses with the same fields as the JSON of ``twice search --json`` and of
the web service; ``to_dict()`` gives that JSON back. The CLI and the web service are thin
layers over this surface.
"""

from __future__ import annotations

import fcntl
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from twice.hashing import dihedral_hashes
from twice.imageio import DecodedImage, decode_image
from twice.indexer import (
    Catalog,
    ImageRow,
    Indexer,
    IndexFileError,
    IndexMismatchError,
    ReindexSummary,
    reindex,
)
from twice.indexer.store import FileStamp
from twice.model.deferred import deferred_embedder
from twice.options import Options
from twice.search import SearchEngine, build_report
from twice.search.verdicts import DUPLICATE, Thresholds, thresholds_for

LOG = logging.getLogger(__name__)

THRESHOLDS_TTL = 30.0  # seconds between re-reads of the calibrated thresholds


class LibraryError(RuntimeError):
    """A request the library cannot answer; ``code`` names the kind for machines (the web
    service's JSON error code)."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(LibraryError, ValueError):
    code = "bad_request"


class NotFound(LibraryError, LookupError):
    code = "not_found"


class NotReady(LibraryError):
    """No usable index yet (or one of another model), or no model."""

    code = "index_not_ready"


class ModelNotReady(NotReady):
    code = "model_not_ready"


ImageInput = str | Path | bytes | Image.Image | np.ndarray


def from_json(cls, data: dict):
    """``cls`` built from a JSON object; a key the dataclass does not know is a bug, not noise."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**data)


class JsonRecord:
    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QueryImage(JsonRecord):
    """The query as it was read: where from, its bytes' sha256, size, format and pHash."""

    source: str
    sha256: str
    width: int
    height: int
    format: str
    bytes: int
    phash: str


@dataclass(frozen=True)
class Match(JsonRecord):
    """One indexed image near the query, with its verdict and the evidence for it."""

    id: int
    path: str
    source: str
    page_url: str | None
    score: float
    verdict: str  # duplicate | similar | different
    exact: bool  # same bytes as the query
    width: int
    height: int
    format: str
    bytes: int
    parent_id: int | None  # the original this image is a known variant of
    transform: str | None  # the edit that made it from parent_id
    evidence: dict[str, Any]


@dataclass(frozen=True)
class SearchResponse(JsonRecord):
    query: QueryImage
    results: list[Match]
    model: str
    thresholds: dict[str, Any]
    tta: str
    took_ms: float

    @classmethod
    def from_json(cls, data: dict) -> SearchResponse:
        query = from_json(QueryImage, data["query"])
        results = [from_json(Match, hit) for hit in data["results"]]
        return from_json(cls, {**data, "query": query, "results": results})


@dataclass(frozen=True)
class GroupMember(JsonRecord):
    """One image of a duplicate group: the original (role ``original``) or a copy of it."""

    id: int
    role: str  # original | duplicate | variant
    score: float
    verdict: str
    evidence: dict[str, Any] | None
    via: list[int]  # images chaining it to the original when the two are not a pair themselves
    source: str
    page_url: str | None
    path: str
    width: int
    height: int
    format: str
    bytes: int
    added_at: str | None
    parent_id: int | None
    transform: str | None


@dataclass(frozen=True)
class DuplicateGroup(JsonRecord):
    """Images that are copies of one another; the original first (see the report's rule)."""

    group: int
    size: int
    findings: int  # members that are not known variants of the original
    hidden_variants: int
    known_variants: int
    max_score: float | None
    min_score: float | None
    min_hash_distance: int | None
    change: str | None  # new | grown | changed | unchanged since the last recorded report
    members: list[GroupMember]

    @property
    def original(self) -> GroupMember:
        return self.members[0]

    @classmethod
    def from_json(cls, data: dict) -> DuplicateGroup:
        members = [from_json(GroupMember, m) for m in data["members"]]
        return from_json(cls, {**data, "members": members})


@dataclass(frozen=True)
class AddedImage(JsonRecord):
    """What adding one image did: ``created`` a row, or found it there already (``match``:
    ``exact`` same bytes, ``duplicate`` a copy search calls a duplicate: ``duplicate_of``)."""

    id: int
    created: bool
    already_indexed: bool
    match: str | None
    duplicate_of: dict[str, Any] | None
    image: dict[str, Any]


class Library:
    """A data directory (catalog, image store, vector index) and the model that embeds for it.

    One library can serve a process for its whole life (the web service keeps one per worker):

    - the model is built on first use (opening a library never loads one);
    - reads (search, metadata) run concurrently from any number of threads;
    - writes (``add_image``, ``remove``) take a thread lock and an inter-process file lock, so
      several processes on one data directory never overwrite each other's index saves;
    - the saved index is reloaded when its file is replaced on disk (a finished ``add`` or
      ``twice reindex``, a fold of the write-ahead log). Files are written to a temporary name
      and renamed, so a changed (inode, mtime, size) stamp is the signal and a half-written file
      is never read;
    - an upload appends its vector to the index's write-ahead log (no rewrite of the index);
      another process's uploads are read from that log when its stamp changes.
    """

    def __init__(self, options: Options, embedder=None) -> None:
        self.options = options
        self.index_path = Path(options.index_path)
        self.lock_path = Path(options.data_dir) / ".service-write.lock"
        self.reloads = 0
        self._embedder = embedder
        self._catalog: Catalog | None = None
        self._indexer: Indexer | None = None
        self._engine: SearchEngine | None = None
        self._stamp: FileStamp | None = None
        self._log_stamp: FileStamp | None = None
        self._not_ready = "not opened yet"
        self._thresholds_at = 0.0
        self._open_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._opened = False

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the everyday surface --------------------------------------------------------------------

    def add(self, paths: list[str | Path], progress: bool = False) -> ReindexSummary:
        """Index image files and folders (new sha256s only) and embed anything pending: what
        ``twice reindex`` does. Searches after it see the new images."""
        paths = [Path(p).expanduser() for p in paths]
        # A re-run with nothing to embed needs only the model's version: no network is built.
        embedder = self._embedder or deferred_embedder(self.options, lambda: self.embedder)
        summary = reindex(paths, self.options, embedder, progress)
        if self._opened:
            self.refresh()
        return summary

    def search(
        self, image: ImageInput, k: int = 10, tta: str | None = None, source: str | None = None
    ) -> SearchResponse:
        """The ``k`` nearest indexed images to ``image`` (a path, encoded bytes, a PIL image or
        an RGB uint8 array), each with a verdict and its evidence; ``source`` names the query
        in the response (default: the path, or what kind of object it was)."""
        return SearchResponse.from_json(self.search_json(image, k, tta, source))

    def search_json(
        self, image: ImageInput, k: int = 10, tta: str | None = None, source: str | None = None
    ) -> dict:
        """``search`` as the JSON object (what the web service sends, without a round trip
        through the dataclasses)."""
        engine = self.engine()
        if isinstance(image, str | Path):
            path = Path(image).expanduser()
            response = engine.search_file(path, k, tta=tta)
            response["query"]["source"] = source or str(path)
            return response
        data, kind = encoded(image)
        return engine.search_bytes(data, k, source=source or kind, tta=tta)

    def duplicates(
        self, threshold: float | None = None, include_variants: bool = False
    ) -> list[DuplicateGroup]:
        """Every group of copies in the index (what ``twice report`` lists)."""
        report = self.report(threshold=threshold, include_variants=include_variants)
        return [DuplicateGroup.from_json(group) for group in report["groups"]]

    def report(self, **kwargs) -> dict:
        """The whole duplicate report as JSON (``twice.search.build_report``'s arguments), judged
        by the thresholds search uses (the model's shipped ones until ``twice calibrate``)."""
        kwargs.setdefault("shipped", self.embedder.shipped_thresholds)
        kwargs.setdefault("embedder", lambda: self.embedder)
        return build_report(self.options, model_version=self.embedder.version, **kwargs)

    # life cycle -----------------------------------------------------------------------------

    def open(self) -> Library:
        """Build the embedder and load the index (idempotent; called lazily by every method)."""
        if self._opened:
            return self
        self.embedder  # noqa: B018 - build the model first, outside the open lock
        with self._open_lock:
            if not self._opened:
                self._catalog = Catalog(self.options.catalog_url)
                with self._write_lock:
                    self._load(FileStamp.of(self.index_path))
                self._opened = True
        return self

    def _build_embedder(self):
        from twice.model import Embedder  # torch and the weights: only once needed

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
        """The model, built on first use (the index is not loaded for it)."""
        if self._embedder is None:
            with self._model_lock:
                if self._embedder is None:
                    self._embedder = self._build_embedder()
        return self._embedder

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
        elif self._indexer is not None and FileStamp.of(self._indexer.log.path) != self._log_stamp:
            with self._write_lock:
                self._log_stamp = FileStamp.of(
                    self._indexer.log.path
                )  # before reading: later appends are seen
                self._indexer.replay_log()
        if time.monotonic() - self._thresholds_at > THRESHOLDS_TTL:
            self._refresh_thresholds()

    def _load(self, stamp: FileStamp | None) -> None:
        """(Re)open the writer and the engine over the index file as it is now."""
        try:
            indexer = Indexer(self.options, self._embedder.version, self._embedder.dim)
            self._log_stamp = FileStamp.of(indexer.log.path)  # before reading: later appends are seen
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
            shipped = self._embedder.shipped_thresholds
            engine.thresholds = thresholds_for(self._catalog, self._embedder.version, shipped)

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

    # single images ---------------------------------------------------------------------------

    def get(self, image_id: int) -> ImageRow:
        row = self.catalog.get(check_id(image_id))
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        return row

    @contextmanager
    def writing(self) -> Iterator[Indexer]:
        """The writer, under the thread lock and the data directory's write lock, index fresh."""
        self.open()
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock, self.lock_path.open("a+b") as handle:
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
        self._log_stamp = FileStamp.of(indexer.log.path)
        stamp = FileStamp.of(self.index_path)
        if self._engine is None:
            self._use(indexer, stamp)  # the first save into an empty data directory
        else:
            self._stamp = stamp

    def add_image(self, data: bytes, source: str, **columns: object) -> AddedImage:
        """Add one image and index it now; says whether it (or a duplicate of it) was there."""
        self.open()
        # Decoded as reindex and search decode it (JPEG draft): the same hashes and vector.
        options = self.options
        decoded = decode_image(
            data, source, options.max_image_bytes, options.max_image_pixels, self._embedder.draft_side
        )
        with self.writing() as indexer:
            known = self.catalog.by_sha256(decoded.sha256)
            if known is not None:
                return self._added(known, created=False, match="exact", duplicate_of=None)
            xq, duplicate_of = self._embed_and_match(decoded)
            added = indexer.add_decoded_bytes(data, decoded, source, **columns)
            if added.created:
                self._store_vector(indexer, added.row.id, xq)
            match = "exact" if not added.created else ("duplicate" if duplicate_of else None)
            return self._added(added.row, added.created, match, duplicate_of)

    def _store_vector(self, indexer: Indexer, image_id: int, xq: np.ndarray) -> None:
        """Append to the write-ahead log; the first image of a data directory writes the file."""
        ids = np.array([image_id], dtype=np.int64)
        if self._stamp is None:
            indexer.add_vectors(ids, xq)
            self._saved(indexer)
            return
        indexer.append(ids, xq)
        self._after_save(indexer)

    def _embed_and_match(self, decoded: DecodedImage) -> tuple[np.ndarray, dict | None]:
        """The new image's vector, and the catalogued image that search calls its duplicate.

        The same evidence as a search (hash with its 8 views, CNN, calibrated verdict), so an
        upload of a turned or brightened copy is flagged whenever searching for it would say so.
        """
        engine = self._engine
        if engine is None:  # the first image of an empty data directory
            return self._embedder.embed_images([decoded.image]), None
        found = engine.find_keypoints(decoded)
        xq, views = engine.embed_views(decoded.image, engine.tta)
        results = engine.rank(decoded, xq, views, dihedral_hashes(decoded.image), k=1, found=found)
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

    def _added(
        self, row: ImageRow, created: bool, match: str | None, duplicate_of: dict | None
    ) -> AddedImage:
        return AddedImage(row.id, created, match is not None, match, duplicate_of, row.to_dict())

    def remove(self, image_id: int) -> ImageRow:
        """Remove an image from the catalog, the index and the image store."""
        image_id = check_id(image_id)
        with self.writing() as indexer:
            row = indexer.remove(image_id)
            if row is None:
                raise NotFound(f"no image with id {image_id}")
            self._after_save(indexer)  # Indexer.remove saved the index
            return row


# Catalog ids are SQLite/PostgreSQL 64-bit integers (and FAISS int64 ids): a bigger one is no id.
MAX_ID = 2**63 - 1


def check_id(image_id: object) -> int:
    if (
        isinstance(image_id, bool)
        or not isinstance(image_id, int | np.integer)
        or not 1 <= image_id <= MAX_ID
    ):
        raise InvalidRequest(f"id must be a positive integer up to {MAX_ID}, got {image_id!r}")
    return int(image_id)


def encoded(image: bytes | Image.Image | np.ndarray) -> tuple[bytes, str]:
    """Encoded image bytes and a name for them, from bytes, a PIL image or an RGB array."""
    if isinstance(image, bytes):
        return image, "<bytes>"
    source = "<image>"
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"an image array must be uint8 HxW or HxWxC, not {image.dtype} {image.shape}")
        image, source = Image.fromarray(image), "<array>"
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), source
    raise TypeError(f"search takes a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")


def open(data_dir: str | Path | None = None, **options: Any) -> Library:  # noqa: A001 (twice.open)
    """A ``Library`` over ``data_dir`` (default: ``TWICE_DATA_DIR``, else ``index_data/``),
    with any other ``Options`` field given by name (``image_size=160``, ``device="cpu"``)."""
    unknown = set(options) - {f.name for f in fields(Options)}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; see twice.options.Options")
    settings = Options.from_env().with_overrides(**options)
    if data_dir is not None:
        settings = settings.with_overrides(data_dir=Path(data_dir).expanduser())
    return Library(settings)
