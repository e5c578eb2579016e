"""``twice reindex``: folders in, vectors out; incremental, resumable, crash-safe.

Two passes share one embedding loop:
1. pending: catalogued images without a vector (a killed run, new augment variants, a new
   model version) are embedded from the image store;
2. new files: files under the given paths are listed with their size and mtime; those seen by
   an earlier run with the same size and mtime (and bytes still catalogued) are skipped unread.
   The rest are read, hashed (sha256 and the perceptual hashes), decoded, preprocessed and
   stored in DataLoader worker processes; the main process embeds a batch while a writer thread
   catalogues the batch before it (one transaction per batch) and appends its vectors.
Rows catalogued before perceptual hashes existed get one computed from the image store (a
third pass, once). Every batch's vectors are fsynced to the index's write-ahead log as soon as
they are embedded, so a killed run loses no finished batch; the log is folded into the index
file every ``checkpoint_seconds``, when it grows large, and at the end.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from sqlalchemy import or_, select, update
from tqdm import tqdm

from twice.borders import trim_borders
from twice.files import ImageStore, OutsideStore, sync_files
from twice.imageio import (
    IMAGE_SUFFIXES,
    ImageError,
    decode_image,
    read_file_bytes,
    sha256_bytes,
)

from .batches import iter_batches
from .schema import ImageRow
from .source_files import record_source_files, seen_source_files
from .store import Indexer, image_hashes, phash_version

LOG = logging.getLogger(__name__)


class BatchEmbedder(Protocol):
    """What reindex needs of a model (``twice.model.Embedder`` is one): a version and size to
    record with the index, a preprocess that runs in decode workers (called as
    ``preprocess(image)``, or ``preprocess(trim_borders(image), trimmed=True)`` where the worker
    has trimmed the image for its hashes), and a batch embedding of preprocessed tensors (or,
    where ``decodes_on_device``, of upright RGB JPEG bytes)."""

    version: str
    dim: int
    draft_side: int | None
    preprocess: Callable[..., Any]

    def embed_tensors(self, batch: Sequence[Any]) -> np.ndarray: ...


@dataclass
class StageTimes:
    """Where a reindex spent its time, in seconds. ``decode`` (read, decode, preprocess),
    ``hash`` (sha256 and the perceptual hashes) and ``store`` (image bytes into the store) are
    summed over the decode workers, which run beside each other and beside the embedding;
    ``embed`` is the main process; ``write`` the writer thread, beside the next batch's
    embedding (fsync of the stored bytes, catalog rows, the vector log); ``wait`` the main
    process waiting for decoded batches: where it is large, decoding is the bottleneck."""

    decode: float = 0.0
    hash: float = 0.0
    store: float = 0.0
    embed: float = 0.0
    write: float = 0.0
    wait: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        setattr(self, stage, getattr(self, stage) + seconds)

    def add_item(self, item: dict) -> None:
        for stage, seconds in item.get("times", {}).items():
            self.add(stage, seconds)

    def to_dict(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), 3) for f in fields(self)}

    def line(self, workers: int) -> str:
        where = f"in {workers} decode workers" if workers else "in this process"
        return (
            f"time: decode {self.decode:.1f}s, hash {self.hash:.1f}s, store {self.store:.1f}s ({where});"
            f" embed {self.embed:.1f}s, write {self.write:.1f}s (beside the embedding);"
            f" waiting for decoded images {self.wait:.1f}s"
        )


@dataclass
class ReindexSummary:
    added: int = 0
    already: int = 0  # read, and their bytes were catalogued already
    unchanged: int = 0  # same size and mtime as when an earlier run read them: not read again
    embedded_pending: int = 0
    orphans_removed: int = 0
    skipped: Counter = field(default_factory=Counter)
    rebuilt: bool = False
    vectors: int = 0
    model_version: str = ""
    seconds: float = 0.0
    model_seconds: float = 0.0  # of ``seconds``, building the network (first use only)
    hashed: int = 0  # older rows given a perceptual hash
    workers: int = 0
    stages: StageTimes = field(default_factory=StageTimes)

    @property
    def images_per_s(self) -> float:
        embedded = self.added + self.embedded_pending
        working = self.seconds - self.model_seconds
        return embedded / working if working > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "skipped": dict(self.skipped),
            "stages": self.stages.to_dict(),
            "images_per_s": round(self.images_per_s, 2),
        }

    def lines(self) -> list[str]:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        embedded = self.added + self.embedded_pending
        return [
            f"added {self.added}, already indexed {self.already}, unchanged (not read) {self.unchanged},"
            f" skipped {skipped}" + (f" ({reasons})" if reasons else ""),
            f"embedded {self.embedded_pending} pending catalog images"
            + (" (new model version: full re-embed)" if self.rebuilt else ""),
            f"index: {self.vectors} vectors, model {self.model_version}",
            *([f"computed perceptual hashes of {self.hashed} older catalog images"] if self.hashed else []),
            f"took {self.seconds:.1f}s ({self.images_per_s:.1f} images/s"
            + (f"; {self.model_seconds:.1f}s of it building the model" if self.model_seconds >= 0.1 else "")
            + ")",
            *([self.stages.line(self.workers)] if embedded else []),
        ]


# listing files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceStamp:
    """A file to index as listed: its path as given, and its size and mtime then."""

    path: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """The path ``source_files`` knows it by (absolute: re-runs may start elsewhere)."""
        return os.path.abspath(self.path)


def scan_files(paths: Sequence[str | Path]) -> list[SourceStamp]:
    """Image files (by suffix) under the given files and folders with their size and mtime, in
    a stable order; one ``stat`` per file (a given file is taken whatever its suffix)."""
    found: list[SourceStamp] = []
    for root in map(str, paths):
        if not os.path.exists(root):
            raise FileNotFoundError(f"no such file or folder: {root}")
        if os.path.isfile(root):
            found.append(_stamp(root, os.stat(root)))
        else:
            found += sorted(_walk(root), key=lambda stamp: stamp.path)
    return found


def _walk(folder: str) -> Iterator[SourceStamp]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                yield _stamp(entry.path, entry.stat())


def _stamp(path: str, stat: os.stat_result) -> SourceStamp:
    return SourceStamp(path, stat.st_size, stat.st_mtime_ns)


def changed_files(files: list[SourceStamp], seen: dict[str, tuple[int, int, str]], known: set[str]) -> list:
    """The files an earlier run did not read as they are now (or whose bytes left the catalog)."""
    out = []
    for stamp in files:
        before = seen.get(stamp.key)
        if before is None or before[:2] != (stamp.size, stamp.mtime_ns) or before[2] not in known:
            out.append(stamp)
    return out


# decode workers -------------------------------------------------------------------------------


class _Timer:
    """Adds the seconds since the last ``lap`` to a stage of a per-item timing dict."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self.last
        self.last = now


class NewFiles:
    """Files to index, prepared in a worker: hashed; unknown ones also decoded, preprocessed,
    hashed perceptually and stored, so the main process only embeds and catalogues."""

    def __init__(
        self, files: list[SourceStamp], known_sha256: set[str], embedder: BatchEmbedder, options, store
    ) -> None:
        self.files, self.known, self.options, self.store = files, known_sha256, options, store
        self.preprocess, self.draft_side = embedder.preprocess, embedder.draft_side
        self.on_device = bool(getattr(embedder, "decodes_on_device", False))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        stamp = self.files[i]
        timer = _Timer()
        try:
            data = read_file_bytes(stamp.path, self.options.max_image_bytes)
            timer.lap("decode")
            sha = sha256_bytes(data)
            timer.lap("hash")
            if sha in self.known:
                return {"file": stamp, "sha256": sha, "known": True, "times": timer.times}
            options = self.options
            decoded = decode_image(
                data, stamp.path, options.max_image_bytes, options.max_image_pixels, self.draft_side, sha
            )
            content = trim_borders(decoded.image)  # once, for the tensor and the hashes
            # An upright RGB JPEG goes to the GPU as bytes (decoded there); the rest as a tensor.
            pixels = (
                data
                if self.on_device and _device_decodable(decoded, data)
                else self.preprocess(content, trimmed=True)
            )
            timer.lap("decode")
            hashes = image_hashes(decoded.image, content)  # here, in the worker, not in the main loop
            timer.lap("hash")
            # fsynced by the writer thread before the row commits, beside the embedding
            stored = self.store.put(data, sha, decoded.format, durable=False)
            timer.lap("store")
        except ImageError as exc:
            return {"file": stamp, "error": exc, "times": timer.times}
        row = {
            "sha256": sha,
            "stored_path": stored,
            "source": stamp.path,
            "width": decoded.width,
            "height": decoded.height,
            "format": decoded.format,
            "bytes": decoded.nbytes,
            "phash_version": phash_version(),
            **hashes,
        }
        return {"file": stamp, "sha256": sha, "row": row, "pixels": pixels, "times": timer.times}


def _device_decodable(decoded, data: bytes) -> bool:
    """JPEGs the GPU decodes as the CPU does: 3-channel or grey, no EXIF turn (nvJPEG ignores it)."""
    if decoded.format != "JPEG":
        return False
    with Image.open(io.BytesIO(data)) as opened:
        return opened.mode in ("RGB", "L") and opened.getexif().get(0x0112, 1) == 1


class StoredFiles:
    """Catalogued images read back from the image store, decoded as reindex decodes files."""

    def __init__(self, rows: list[tuple[int, Path]], embedder: BatchEmbedder, options) -> None:
        self.rows, self.options, self.draft_side = rows, options, embedder.draft_side

    def __len__(self) -> int:
        return len(self.rows)

    def _decode(self, i: int):
        image_id, path = self.rows[i]
        data = read_file_bytes(path, self.options.max_image_bytes)
        options = self.options
        return image_id, decode_image(
            data, str(path), options.max_image_bytes, options.max_image_pixels, self.draft_side
        )


class StoredImages(StoredFiles):
    """Catalogued images read back from the image store, for pending embeddings."""

    def __init__(self, rows: list[tuple[int, Path]], embedder: BatchEmbedder, options) -> None:
        super().__init__(rows, embedder, options)
        self.preprocess = embedder.preprocess

    def __getitem__(self, i: int) -> dict:
        timer = _Timer()
        try:
            image_id, decoded = self._decode(i)
            pixels = self.preprocess(decoded.image)
            timer.lap("decode")
            return {"id": image_id, "pixels": pixels, "times": timer.times}
        except ImageError as exc:
            return {"id": self.rows[i][0], "path": str(self.rows[i][1]), "error": exc}


class StoredHashes(StoredFiles):
    """Catalogued images read back from the image store, for their perceptual hash."""

    def __getitem__(self, i: int) -> dict:
        try:
            image_id, decoded = self._decode(i)
            return {"id": image_id, "hashes": image_hashes(decoded.image)}
        except ImageError as exc:
            return {"id": self.rows[i][0], "path": str(self.rows[i][1]), "error": exc}


# the run ------------------------------------------------------------------------------------


class Checkpointer:
    """Folds the vector log into the index file when enough time has passed since the last fold."""

    def __init__(self, indexer: Indexer, seconds: float) -> None:
        self.indexer, self.seconds, self.last = indexer, seconds, time.monotonic()

    def maybe_save(self) -> None:
        if time.monotonic() - self.last >= self.seconds:
            self.save()

    def save(self) -> None:
        self.indexer.save()
        self.last = time.monotonic()


def reindex(
    paths: list[str | Path], options, embedder: BatchEmbedder, progress: bool = True
) -> ReindexSummary:
    """Bring the index up to date with the catalog and the given files and folders."""
    started = time.monotonic()
    built_before = getattr(embedder, "loaded", True)  # a DeferredEmbedder builds on first use
    files = scan_files(paths)
    indexer = Indexer(options, embedder.version, embedder.dim)
    summary = ReindexSummary(rebuilt=indexer.rebuilding, model_version=embedder.version)
    checkpointer = Checkpointer(indexer, options.checkpoint_seconds)
    try:
        summary.orphans_removed = indexer.drop_orphans()
        _embed_pending(indexer, embedder, options, summary, checkpointer, progress)
        _add_new_files(indexer, embedder, options, files, summary, checkpointer, progress)
        _backfill_hashes(indexer, embedder, options, summary, progress)
        if _index_changed(indexer, summary):
            checkpointer.save()
        summary.vectors = len(indexer.vectors)
    finally:
        indexer.close()
    summary.seconds = time.monotonic() - started
    if not built_before:
        summary.model_seconds = getattr(embedder, "load_seconds", 0.0)
    return summary


def _index_changed(indexer: Indexer, summary: ReindexSummary) -> bool:
    """Whether the index file needs writing: a re-run with nothing new leaves it alone."""
    changed = summary.added or summary.embedded_pending or summary.orphans_removed or summary.rebuilt
    return bool(changed) or indexer.log.exists() or not indexer.index_path.exists()


def _embed_pending(indexer, embedder, options, summary, checkpointer, progress) -> None:
    pending = indexer.pending_ids()
    if not len(pending):
        return
    rows = indexer.catalog.get_many(pending.tolist())
    items = _stored_files(indexer, [(i, rows[i].stored_path) for i in sorted(rows)], summary)
    dataset = StoredImages(items, embedder, options)
    workers = summary.workers = _workers(options, len(items))
    bar = tqdm(total=len(items), desc="embedding catalog", unit="img", disable=not progress)
    for batch in _timed_batches(dataset, options, workers, summary.stages):
        good = _without_errors(batch, summary, "skipped catalog image")
        if good:
            ids = np.array([item["id"] for item in good], dtype=np.int64)
            xb = _embed(embedder, good, summary.stages)
            with _stage(summary.stages, "write"):
                indexer.append(ids, xb)
            summary.embedded_pending += len(good)
        bar.update(len(batch))
        checkpointer.maybe_save()
    bar.close()


def _add_new_files(indexer, embedder, options, files, summary, checkpointer, progress) -> None:
    if not files:
        return
    known = indexer.catalog.known_sha256()
    todo = changed_files(files, seen_source_files(indexer.catalog), known)
    summary.unchanged = len(files) - len(todo)
    if not todo:
        return
    dataset = NewFiles(todo, known, embedder, options, ImageStore(indexer.store.root))
    workers = summary.workers = _workers(options, len(todo))
    bar = tqdm(total=len(todo), desc="indexing files", unit="img", disable=not progress)
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reindex-writer") as writer:
        for batch in _timed_batches(dataset, options, workers, summary.stages):
            new = [item for item in batch if "row" in item]
            xb = _embed(embedder, new, summary.stages) if new else None
            if pending is not None:
                pending.result()  # one batch in flight: errors surface, memory stays bounded
            pending = writer.submit(_write_batch, indexer, batch, new, xb, summary)
            bar.update(len(batch))
            _show_counts(bar, summary)
            checkpointer.maybe_save()
        if pending is not None:
            pending.result()
    _show_counts(bar, summary)  # the last batch's counts: written after the loop
    bar.close()


def _show_counts(bar: tqdm, summary: ReindexSummary) -> None:
    """The counts of the batches written so far (one batch is written beside the next)."""
    bar.set_postfix(added=summary.added, skipped=sum(summary.skipped.values()))


def _write_batch(indexer: Indexer, batch: list[dict], new: list[dict], xb, summary: ReindexSummary) -> None:
    """Make the batch's stored bytes durable, catalogue it in one transaction (rows and file
    stamps), then log its vectors."""
    with _stage(summary.stages, "write"):
        # The workers' own ``put`` paths: inside the store, no need to resolve them again.
        sync_files([indexer.store.root / item["row"]["stored_path"] for item in new])
        with indexer.catalog.session() as session:
            # Writers sharing images queue on their sha256s instead of deadlocking (PostgreSQL).
            indexer.catalog.lock_sha256(session, [item["row"]["sha256"] for item in new])
            outcomes = indexer.add_stored(session, [item["row"] for item in new])
            record_source_files(
                session, [(i["file"].key, i["file"], i["sha256"]) for i in batch if "sha256" in i]
            )
        for item in batch:
            if "error" in item:
                summary.skipped[item["error"].reason] += 1
                LOG.warning("skipped %s", item["error"])
            elif item.get("known"):
                summary.already += 1
        created = np.array([made for _, made in outcomes], dtype=bool)
        summary.already += int((~created).sum())  # the same bytes twice in this run, or another writer's
        if created.any():
            ids = np.array([image_id for image_id, made in outcomes if made], dtype=np.int64)
            indexer.append(ids, xb[created])
            summary.added += len(ids)


def _backfill_hashes(indexer, embedder, options, summary, progress) -> None:
    version = phash_version()  # rows hashed by another version are hashed again
    stale = or_(ImageRow.phash.is_(None), ImageRow.phash_version.is_(None), ImageRow.phash_version != version)
    with indexer.catalog.session() as session:
        query = select(ImageRow.id, ImageRow.stored_path).where(stale).order_by(ImageRow.id)
        rows = session.execute(query).all()
    if not rows:
        return
    items = _stored_files(indexer, rows, summary)
    dataset = StoredHashes(items, embedder, options)
    bar = tqdm(total=len(items), desc="hashing catalog", unit="img", disable=not progress)
    for batch in iter_batches(dataset, options.batch_size, _workers(options, len(items))):
        good = _without_errors(batch, summary, "cannot hash catalog image")
        values = [{"id": item["id"], **item["hashes"], "phash_version": version} for item in good]
        if values:
            with indexer.catalog.session() as session:
                session.execute(update(ImageRow), values)
            summary.hashed += len(values)
        bar.update(len(batch))
    bar.close()


def _stored_files(indexer, rows, summary: ReindexSummary) -> list[tuple[int, Path]]:
    """(id, file) of catalogued images; a row whose stored path leaves the store is skipped."""
    items = []
    for image_id, stored in rows:
        try:
            items.append((image_id, indexer.store.path(stored)))
        except OutsideStore as exc:
            summary.skipped["outside_store"] += 1
            LOG.warning("skipped catalog image %d: %s", image_id, exc)
    return items


# helpers ------------------------------------------------------------------------------------


@contextmanager
def _stage(times: StageTimes, name: str) -> Iterator[None]:
    """Adds the block's seconds to one stage."""
    started = time.perf_counter()
    try:
        yield
    finally:
        times.add(name, time.perf_counter() - started)


def _timed_batches(dataset, options, workers: int, times: StageTimes) -> Iterator[list[dict]]:
    """The dataset's batches, counting the wait for each and the workers' own stage times."""
    batches = iter(iter_batches(dataset, options.batch_size, workers))
    while True:
        with _stage(times, "wait"):
            batch = next(batches, None)
        if batch is None:
            return
        for item in batch:
            times.add_item(item)
        yield batch


def _embed(embedder: BatchEmbedder, items: list[dict], times: StageTimes) -> np.ndarray:
    with _stage(times, "embed"):
        return embedder.embed_tensors([item["pixels"] for item in items])


def _without_errors(batch: list[dict], summary: ReindexSummary, what: str) -> list[dict]:
    """The items of a batch of stored images that decoded; the others are logged and counted."""
    good = []
    for item in batch:
        if "error" in item:
            summary.skipped[item["error"].reason] += 1
            LOG.warning("%s %d: %s", what, item["id"], item["error"])
        else:
            good.append(item)
    return good


def _workers(options, n: int) -> int:
    return 0 if n < 2 * options.batch_size else options.workers
