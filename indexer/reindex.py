"""``twice reindex``: folders in, vectors out; incremental, resumable, crash-safe.

Two passes share one embedding loop:
1. pending: catalogued images without a vector (a killed run, new augment variants, a new
   model version) are embedded from the image store;
2. new files: files under the given paths whose sha256 is unknown are decoded once (in
   DataLoader workers), stored, catalogued and embedded.
Rows catalogued before perceptual hashes existed get one computed from the image store (a
third pass, once). The index is saved every ``checkpoint_seconds`` and at the end; a killed run loses at most
the vectors since the last save, and those rows are pending for the next run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import or_, select, update
from tqdm import tqdm

from twice.files import OutsideStore
from twice.imageio import ImageError, decode_image, iter_image_files, read_file_bytes, sha256_bytes

from .batches import iter_batches
from .schema import ImageRow
from .store import Indexer, image_hashes, phash_version

LOG = logging.getLogger(__name__)


class BatchEmbedder(Protocol):
    """What reindex needs of a model (``twice.model.Embedder`` is one): a version and size to
    record with the index, a preprocess that runs in decode workers, and a batch embedding."""

    version: str
    dim: int
    draft_side: int | None
    preprocess: Callable[[Any], Any]

    def embed_tensors(self, batch: Sequence[Any]) -> np.ndarray: ...


@dataclass
class ReindexSummary:
    added: int = 0
    already: int = 0
    embedded_pending: int = 0
    orphans_removed: int = 0
    skipped: Counter = field(default_factory=Counter)
    rebuilt: bool = False
    vectors: int = 0
    model_version: str = ""
    seconds: float = 0.0
    hashed: int = 0  # older rows given a perceptual hash

    def to_dict(self) -> dict:
        return {**self.__dict__, "skipped": dict(self.skipped)}

    def lines(self) -> list[str]:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        rate = (self.added + self.embedded_pending) / self.seconds if self.seconds else 0.0
        return [
            f"added {self.added}, already indexed {self.already}, skipped {skipped}"
            + (f" ({reasons})" if reasons else ""),
            f"embedded {self.embedded_pending} pending catalog images"
            + (" (new model version: full re-embed)" if self.rebuilt else ""),
            f"index: {self.vectors} vectors, model {self.model_version}",
            *([f"computed perceptual hashes of {self.hashed} older catalog images"] if self.hashed else []),
            f"took {self.seconds:.1f}s ({rate:.1f} images/s)",
        ]


class NewFiles:
    """Files to index: hashed in the worker; unknown ones decoded and preprocessed there too."""

    def __init__(self, paths: list[Path], known_sha256: set[str], embedder: BatchEmbedder, options) -> None:
        self.paths, self.known, self.options = paths, known_sha256, options
        self.preprocess, self.draft_side = embedder.preprocess, embedder.draft_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = str(self.paths[i])
        try:
            data = read_file_bytes(path, self.options.max_image_bytes)
            sha = sha256_bytes(data)
            if sha in self.known:
                return {"path": path, "known": True}
            decoded = decode_image(
                data, path, self.options.max_image_bytes, self.options.max_image_pixels, self.draft_side
            )
            return {
                "path": path,
                "data": data,
                "decoded": decoded,
                "tensor": self.preprocess(decoded.image),
                "hashes": image_hashes(decoded.image),  # here, in the worker, not in the main loop
            }
        except ImageError as exc:
            return {"path": path, "error": exc}


class StoredImages:
    """Catalogued images read back from the image store, for pending embeddings."""

    def __init__(self, rows: list[tuple[int, Path]], embedder: BatchEmbedder, options) -> None:
        self.rows, self.options = rows, options
        self.preprocess, self.draft_side = embedder.preprocess, embedder.draft_side

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        image_id, path = self.rows[i]
        try:
            decoded = decode_image(
                read_file_bytes(path, self.options.max_image_bytes),
                str(path),
                self.options.max_image_bytes,
                self.options.max_image_pixels,
                self.draft_side,
            )
            return {"id": image_id, "tensor": self.preprocess(decoded.image)}
        except ImageError as exc:
            return {"id": image_id, "path": str(path), "error": exc}


class Checkpointer:
    """Saves the index when enough time has passed since the last save."""

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
    files = list(iter_image_files(paths))
    indexer = Indexer(options, embedder.version, embedder.dim)
    summary = ReindexSummary(rebuilt=indexer.rebuilding, model_version=embedder.version)
    checkpointer = Checkpointer(indexer, options.checkpoint_seconds)
    try:
        summary.orphans_removed = indexer.drop_orphans()
        _embed_pending(indexer, embedder, options, summary, checkpointer, progress)
        _add_new_files(indexer, embedder, options, files, summary, checkpointer, progress)
        _backfill_hashes(indexer, embedder, options, summary, progress)
        checkpointer.save()
        summary.vectors = len(indexer.vectors)
    finally:
        indexer.close()
    summary.seconds = time.monotonic() - started
    return summary


def _embed_pending(indexer, embedder, options, summary, checkpointer, progress) -> None:
    pending = indexer.pending_ids()
    if not len(pending):
        return
    rows = indexer.catalog.get_many(pending.tolist())
    items = _stored_files(indexer, [(i, rows[i].stored_path) for i in sorted(rows)], summary)
    dataset = StoredImages(items, embedder, options)
    bar = tqdm(total=len(items), desc="embedding catalog", unit="img", disable=not progress)
    for batch in iter_batches(dataset, options.batch_size, _workers(options, len(items))):
        good = _without_errors(batch, summary, "skipped catalog image")
        if good:
            ids = np.array([item["id"] for item in good], dtype=np.int64)
            indexer.add_vectors(ids, embedder.embed_tensors([g["tensor"] for g in good]))
            summary.embedded_pending += len(good)
        bar.update(len(batch))
        checkpointer.maybe_save()
    bar.close()


def _add_new_files(indexer, embedder, options, files, summary, checkpointer, progress) -> None:
    if not files:
        return
    dataset = NewFiles(files, indexer.catalog.known_sha256(), embedder, options)
    bar = tqdm(total=len(files), desc="indexing files", unit="img", disable=not progress)
    for batch in iter_batches(dataset, options.batch_size, _workers(options, len(files))):
        ids, tensors = [], []
        new = [item["decoded"].sha256 for item in batch if "decoded" in item]
        with indexer.catalog.session() as session:
            indexer.catalog.lock_sha256(session, new)  # writers sharing images queue, not deadlock
            for item in batch:
                if "error" in item:
                    summary.skipped[item["error"].reason] += 1
                    LOG.warning("skipped %s", item["error"])
                    continue
                if item.get("known"):
                    summary.already += 1
                    continue
                row, created = indexer.add_decoded(
                    session, item["data"], item["decoded"], item["path"], **item["hashes"]
                )
                if not created:  # the same bytes twice in this run
                    summary.already += 1
                    continue
                ids.append(row.id)
                tensors.append(item["tensor"])
        if ids:
            indexer.add_vectors(np.array(ids, dtype=np.int64), embedder.embed_tensors(tensors))
            summary.added += len(ids)
        bar.update(len(batch))
        bar.set_postfix(added=summary.added, skipped=sum(summary.skipped.values()))
        checkpointer.maybe_save()
    bar.close()


class StoredHashes(StoredImages):
    """Catalogued images read back from the image store, for their perceptual hash."""

    def __getitem__(self, i: int) -> dict:
        image_id, path = self.rows[i]
        try:
            data = read_file_bytes(path, self.options.max_image_bytes)
            decoded = decode_image(
                data, str(path), self.options.max_image_bytes, self.options.max_image_pixels, self.draft_side
            )
            return {"id": image_id, "hashes": image_hashes(decoded.image)}
        except ImageError as exc:
            return {"id": image_id, "path": str(path), "error": exc}


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
