"""The writer's view of one data directory: catalog + image files + vector index.

Every write path (reindex, augment, crawler, API uploads, deletes) goes through ``Indexer``
so that the three stay consistent:

- image bytes are written (atomically) before the catalog row that points at them;
- catalog rows may exist without a vector (pending): the next reindex embeds them;
- vectors whose catalog row is gone (orphans) are removed by the next reindex;
- vectors are appended to a write-ahead log (fsynced) beside the index file, and the log is
  folded into the file (rewrite, rename, delete the log) when it grows past a quarter of the
  index, on ``save`` and on ``close``: one upload costs one small append, not a rewrite;
- the catalog's index record is written only after the index file is durable.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from twice.files import ImageStore
from twice.hashing import HASH_VERSION, STORED_COLUMNS, stored_hashes
from twice.imageio import DecodedImage, decode_image

from .catalog import Catalog
from .schema import ImageRow
from .vector_log import VectorLog, log_path
from .vectors import IndexFileError, IndexMismatchError, VectorIndex

LOG = logging.getLogger(__name__)

# The log is folded into the index file once it holds this many records and a quarter of the
# index: rewrites stay rare (amortised, a constant cost per add) and replay on open stays short.
FOLD_MIN_RECORDS = 4096
FOLD_FRACTION = 0.25


@dataclass
class Added:
    """Outcome of adding one image: its row and whether it is new."""

    row: ImageRow
    created: bool
    decoded: DecodedImage


class Indexer:
    """Catalog, image store and vector index of one data directory, for one model version."""

    def __init__(self, options, model_version: str, dim: int) -> None:
        self.options = options
        self.catalog = Catalog(options.catalog_url)
        self.store = ImageStore(options.images_dir)
        self.index_path = Path(options.index_path)
        self.model_version = model_version
        self.dim = dim
        self._vectors: VectorIndex | None = None
        self._rebuilding = False
        self._disk_stamp: FileStamp | None = None
        self._lock = threading.RLock()
        self.log = VectorLog(log_path(self.index_path), model_version, dim)
        self._appended = 0  # vectors this writer logged and has not folded yet

    @property
    def vectors(self) -> VectorIndex:
        """The vector index, loaded on first use (catalog-only work never pays for it)."""
        with self._lock:
            if self._vectors is None:
                self._vectors, self._rebuilding = self._open_vectors()
            return self._vectors

    @property
    def rebuilding(self) -> bool:
        """True when the saved index is of another model version and is being rebuilt."""
        _ = self.vectors
        return self._rebuilding

    def _open_vectors(self) -> tuple[VectorIndex, bool]:
        fresh = VectorIndex(self.model_version, self.dim, flat_limit=self.options.flat_limit)
        self._disk_stamp = FileStamp.of(self.index_path)  # before reading: a later change is seen
        if self._disk_stamp is None:
            fresh.replay(self.log)  # a first reindex killed before its first fold
            return fresh, False
        header = VectorIndex.read_header(self.index_path)
        if header["model_version"] != self.model_version or header["dim"] != self.dim:
            LOG.warning(
                "index %s was built by model %s; the current model is %s: every image will be re-embedded",
                self.index_path,
                header["model_version"],
                self.model_version,
            )
            fresh.replay(self.log)  # a killed re-embed resumes from its log
            return fresh, True
        return VectorIndex.load(self.index_path, self.model_version, self.dim), False

    def close(self) -> None:
        """Fold what this writer logged into the index file (not mid-rebuild: the old index
        stays until the new one is whole), then close the catalog."""
        try:
            with self._lock:
                if self._appended and not self._rebuilding:
                    self.save()
        finally:
            self.catalog.close()

    # adding -------------------------------------------------------------------------------

    def decode(self, data: bytes, source: str, draft_side: int | None = None) -> DecodedImage:
        return decode_image(
            data, source, self.options.max_image_bytes, self.options.max_image_pixels, draft_side
        )

    def add_decoded(
        self, session, data: bytes, decoded: DecodedImage, source: str, **columns: object
    ) -> tuple[ImageRow, bool]:
        """Store bytes and insert the catalog row inside ``session`` (no vector yet).

        The row's perceptual hashes are computed here unless ``columns`` carries them
        (``phash`` and its photometric views, ``image_hashes``).
        """
        known = self.catalog.find_sha256(session, decoded.sha256)
        if known is not None:
            return known, False
        if columns.get("phash") is None:
            columns.update(image_hashes(decoded.image))
        columns.setdefault("phash_version", phash_version())
        stored = self.store.put(data, decoded.sha256, decoded.format)
        return self.catalog.add_image(
            session,
            sha256=decoded.sha256,
            stored_path=stored,
            source=source,
            width=decoded.width,
            height=decoded.height,
            format=decoded.format,
            bytes=decoded.nbytes,
            **columns,
        )

    def add_stored(self, session, rows: list[dict]) -> list[tuple[int, bool]]:
        """Catalogue images whose bytes are in the store already (reindex workers put them
        there), inside ``session``: one query for the sha256s known, one batched insert for the
        rest. Returns (id, created) per row, in order; bytes seen twice are created once."""
        shas = {row["sha256"] for row in rows}
        if not shas:
            return []
        found = select(ImageRow.sha256, ImageRow.id).where(ImageRow.sha256.in_(shas))
        known = {sha: image_id for sha, image_id in session.execute(found)}
        values: dict[str, dict] = {}
        for row in rows:
            if row["sha256"] not in known:
                values.setdefault(row["sha256"], row)  # the first file with these bytes names them
        new = {sha: ImageRow(**columns) for sha, columns in values.items()}
        try:
            with session.begin_nested():
                session.add_all(new.values())
        except IntegrityError:  # another writer catalogued some of these bytes first: one by one
            new = {}
            for sha, columns in values.items():
                added, created = self.catalog.add_image(session, **columns)
                if created:
                    new[sha] = added
                else:
                    known[sha] = added.id
        outcomes, made = [], set()
        for row in rows:
            sha = row["sha256"]
            if sha in known:
                outcomes.append((known[sha], False))
            else:
                outcomes.append((new[sha].id, sha not in made))
                made.add(sha)
        return outcomes

    def add_bytes(self, data: bytes, source: str, draft_side: int | None = None, **columns: object) -> Added:
        """Decode, store and catalogue one image; raises ``ImageError`` for bad input.

        Pass the embedder's ``draft_side`` when ``Added.decoded.image`` will be embedded.
        """
        return self.add_decoded_bytes(data, self.decode(data, source, draft_side), source, **columns)

    def add_decoded_bytes(self, data: bytes, decoded: DecodedImage, source: str, **columns: object) -> Added:
        """``add_bytes`` for bytes the caller has decoded already (with the same ``draft_side``
        as it embeds them: the stored hashes come from this decode)."""
        with self._lock, self.catalog.session() as session:
            row, created = self.add_decoded(session, data, decoded, source, **columns)
        return Added(row, created, decoded)

    def add_vectors(self, ids: np.ndarray, xb: np.ndarray) -> None:
        """Add vectors in memory only; ``save`` makes them durable (``append`` does both at once)."""
        with self._lock:
            self.vectors.add(ids, xb)

    def append(self, ids: np.ndarray, xb: np.ndarray) -> None:
        """Add vectors durably without rewriting the index file: they are fsynced to the
        write-ahead log, then added in memory; a large log is folded into the file."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        with self._lock, self._file_lock():
            self.vectors.replay(self.log)  # other writers' records first: positions stay in step
            self.vectors.log_position = self.log.append(ids, xb)
            self.vectors.add(ids, xb)
            self._appended += len(ids)
            if self._log_records() >= max(FOLD_MIN_RECORDS, FOLD_FRACTION * len(self.vectors)):
                self._save_locked()

    def replay_log(self) -> int:
        """Take in the vectors other writers appended since we last read the log."""
        with self._lock:
            return self.vectors.replay(self.log)

    def _log_records(self) -> int:
        position = self.vectors.log_position
        return position.offset // self.log.record_bytes if position else 0

    # removing -----------------------------------------------------------------------------

    def remove(self, image_id: int) -> ImageRow | None:
        """Delete an image: catalog row first (an orphan vector is harmless), then vector, file."""
        with self._lock:
            row = self.catalog.delete(image_id)
            if row is None:
                return None
            self.vectors.remove([image_id])
            self.save()
            self.store.remove(row.stored_path)
            return row

    # consistency --------------------------------------------------------------------------

    def pending_ids(self) -> np.ndarray:
        """Catalogued images that have no vector yet."""
        return np.setdiff1d(self.catalog.ids(), self.vectors.ids(), assume_unique=True)

    def drop_orphans(self) -> int:
        """Remove vectors whose catalog row no longer exists."""
        orphans = np.setdiff1d(self.vectors.ids(), self.catalog.ids(), assume_unique=True)
        if len(orphans):
            LOG.info("removing %d vectors with no catalog row", len(orphans))
            self.vectors.remove(orphans)
        return len(orphans)

    def save(self) -> None:
        """Make the index durable, then record what it holds in the catalog.

        Several processes may write one data directory (a reindex, API workers): saves are
        serialised by a file lock, and vectors another writer saved since this one read the
        file are merged in first, so no writer's additions are lost.
        """
        with self._lock, self._file_lock():
            self._save_locked()

    def _save_locked(self) -> None:
        """Fold: merge other writers' saves and log records, rewrite the file, drop the log."""
        self._merge_from_disk()
        self.vectors.replay(self.log)
        self.vectors.save(self.index_path)
        self.log.remove()  # after the rename: a crash in between replays records already saved
        self.vectors.log_position = None
        self._appended = 0
        self._disk_stamp = FileStamp.of(self.index_path)
        self._rebuilding = False
        self.catalog.set_index_record(
            self.model_version, self.dim, self.vectors.index_type, len(self.vectors)
        )

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self.index_path.with_name(self.index_path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _merge_from_disk(self) -> None:
        """Add vectors that another writer saved since we read the file (rows still catalogued)."""
        if FileStamp.of(self.index_path) in (None, self._disk_stamp):
            return
        try:
            other = VectorIndex.load(self.index_path, self.model_version, self.dim, replay_log=False)
        except (IndexFileError, IndexMismatchError) as exc:
            LOG.warning("not merging %s (%s): it will be replaced", self.index_path, exc)
            return
        ids, xb = other.vectors()
        missing = np.setdiff1d(ids, self.vectors.ids(), assume_unique=True)
        live = np.intersect1d(missing, self.catalog.ids(), assume_unique=True)
        if len(live):
            LOG.info("merging %d vectors saved by another writer", len(live))
            self.vectors.add(live, xb[np.searchsorted(ids, live)])


@dataclass(frozen=True)
class FileStamp:
    """Identity of one version of a file: a rename changes the inode, a rewrite mtime or size,
    so every atomic replace gives a new stamp."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        """The file's stamp now, None when it is absent."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return cls(stat.st_ino, stat.st_mtime_ns, stat.st_size)


def image_hashes(image, content=None) -> dict[str, int | None]:
    """Every stored hash of an image as catalog columns: ``phash`` and its photometric views
    (``content``: the image's ``trim_borders``, where the caller has it)."""
    plain, *views = stored_hashes(image, content)
    return {"phash": plain, **dict(zip(STORED_COLUMNS, views, strict=True))}


def phash_version() -> int:
    """The version of ``image_hashes`` (stored beside it: other versions are recomputed)."""
    return HASH_VERSION


def load_vectors_for_search(options, model_version: str, dim: int) -> VectorIndex:
    """The saved index for searching; clear errors when it is missing or from another model."""
    path = Path(options.index_path)
    if not path.exists():
        raise IndexFileError(f"{path}: no index yet; run `twice reindex FOLDER` first")
    return VectorIndex.load(path, model_version, dim)
