"""``twice reindex --ray [ADDRESS]``: the embedding stage of reindex as a Ray Data pipeline.

The driver (the machine running the command) reads the pending catalog rows (catalogued images
without a vector: crawled, augmented, or a new model version), and Ray Data streams them through
``EmbedWorker`` actors, one per worker slot (a GPU each where the cluster has GPUs, else a CPU
each), that decode, hash and embed a batch and return ``(id, vector, hashes)`` columns. The
driver adds each returned shard to the index and writes the hashes to the catalog, saving the
index as today's reindex does (every ``checkpoint_seconds`` and at the end), so a killed run
loses at most the vectors since the last save and the next run embeds only what is still pending.

Workers read the images from the image store by path: on a cluster the data directory's
``images/`` must be mounted at the same path on every node (docs/deployment.md). The embedder
is shipped to the workers from the driver, so every vector comes from the very weights whose
version the index records.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from sqlalchemy import update

from twice.borders import trim_borders
from twice.imageio import ImageError, decode_image, read_file_bytes

from .reindex import BatchEmbedder, Checkpointer, ReindexSummary, _backfill_hashes, _stored_files
from .schema import ImageRow
from .store import Indexer, image_hashes, phash_version

LOG = logging.getLogger(__name__)


class EmbedWorker:
    """A Ray actor: decodes, hashes and embeds batches of ``{id, path}`` rows."""

    def __init__(self, embedder: BatchEmbedder, max_bytes: int, max_pixels: int) -> None:
        import torch

        if torch.cuda.is_available() and getattr(embedder, "device", None) is not None:
            embedder = dataclasses.replace(embedder, device=torch.device("cuda"))
        self.embedder, self.max_bytes, self.max_pixels = embedder, max_bytes, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, tensors, hashes, errors = [], [], [], []
        for image_id, path in zip(batch["id"].tolist(), batch["path"].tolist(), strict=True):
            try:
                data = read_file_bytes(path, self.max_bytes)
                decoded = decode_image(data, path, self.max_bytes, self.max_pixels, self.embedder.draft_side)
            except ImageError as exc:
                errors.append(f"{image_id}\t{exc.reason}\t{exc}")
                continue
            ids.append(image_id)
            content = trim_borders(decoded.image)  # once, for the tensor and the hashes
            tensors.append(self.embedder.preprocess(content, trimmed=True))
            hashes.append(image_hashes(decoded.image, content))
        vectors = (
            self.embedder.embed_tensors(tensors) if tensors else np.zeros((0, self.embedder.dim), "float32")
        )
        return {
            "id": np.array(ids + [-1] * len(errors), dtype=np.int64),
            "vector": np.concatenate([vectors, np.zeros((len(errors), self.embedder.dim), "float32")]),
            "hashes": np.array(hashes + [None] * len(errors), dtype=object),
            "error": np.array([""] * len(ids) + errors, dtype=object),
        }


def reindex_on_ray(
    options, embedder: BatchEmbedder, address: str | None = None, progress: bool = True
) -> ReindexSummary:
    """Embed every pending catalog image on a Ray cluster (``address``; None: start a local
    one, or join the one ``RAY_ADDRESS`` names) and add the vectors to the index here."""
    import ray

    started = time.monotonic()
    indexer = Indexer(options, embedder.version, embedder.dim)
    summary = ReindexSummary(rebuilt=indexer.rebuilding, model_version=embedder.version)
    checkpointer = Checkpointer(indexer, options.checkpoint_seconds)
    owns_ray = not ray.is_initialized()
    try:
        summary.orphans_removed = indexer.drop_orphans()
        pending = indexer.pending_ids()
        if len(pending):
            rows = indexer.catalog.get_many(pending.tolist())
            items = _stored_files(indexer, [(i, rows[i].stored_path) for i in sorted(rows)], summary)
            if owns_ray:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            for shard in _embedded_shards(items, options, embedder):
                _add_shard(indexer, shard, summary)
                checkpointer.maybe_save()
                if progress:
                    LOG.info("embedded %d of %d pending images", summary.embedded_pending, len(items))
        _backfill_hashes(indexer, embedder, options, summary, progress)  # rows outside the pending set
        checkpointer.save()
        summary.vectors = len(indexer.vectors)
    finally:
        indexer.close()
        if owns_ray and ray.is_initialized():
            ray.shutdown()
    summary.seconds = time.monotonic() - started
    return summary


def _embedded_shards(items: list[tuple[int, Path]], options, embedder: BatchEmbedder):
    """The pipeline: rows in, ``(id, vector, hashes, error)`` batches out, streamed."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = gpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
    LOG.info("embedding %d images on Ray with %d %s workers", len(items), workers, "GPU" if gpus else "CPU")
    rows = [{"id": image_id, "path": str(path)} for image_id, path in items]
    dataset = ray.data.from_items(rows).map_batches(
        EmbedWorker,
        fn_constructor_kwargs={
            "embedder": embedder,
            "max_bytes": options.max_image_bytes,
            "max_pixels": options.max_image_pixels,
        },
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(workers, max(1, len(rows) // options.batch_size))),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


def _add_shard(indexer: Indexer, shard: dict[str, np.ndarray], summary: ReindexSummary) -> None:
    good = shard["id"] >= 0
    for error in shard["error"][~good]:
        image_id, reason, message = error.split("\t", 2)
        summary.skipped[reason] += 1
        LOG.warning("skipped catalog image %s: %s", image_id, message)
    if not good.any():
        return
    ids = shard["id"][good]
    indexer.add_vectors(ids, np.stack(shard["vector"][good]).astype(np.float32))
    version = phash_version()
    values = [
        {"id": int(i), **h, "phash_version": version} for i, h in zip(ids, shard["hashes"][good], strict=True)
    ]
    with indexer.catalog.session() as session:
        session.execute(update(ImageRow), values)
    summary.embedded_pending += int(good.sum())
