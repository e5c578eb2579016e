"""``twice whiten``: fit the embedding's PCA whitening on training images, write the checkpoint.

The trained net puts most of its variance into directions that many unrelated images share, so
two different drawings on white can score 0.95 while a tilted copy of a photo scores 0.92.
Whitening the embedding (centre it, rotate to the principal axes, scale each to unit variance;
Jégou & Chum, ECCV 2012) weighs every direction equally. It is fitted on the training sources
(never on the bench's images), after training, and stored in the checkpoint
(``EmbeddingNet.whitening``), so the index, the search and the reports all see it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .training_data import Sources, gather_paths, load_images
from .weights import save_checkpoint

LOG = logging.getLogger(__name__)

DEFAULT_IMAGES = 4000
# Added to every eigenvalue, as a share of the largest: no direction is scaled up more than
# ~300x, so a direction the fit images barely span cannot turn rounding into signal.
SHRINKAGE = 1e-5
MIN_IMAGES_PER_DIM = 2  # fewer images than this per dimension leave the covariance rank-poor


def fit_whitening(embeddings: np.ndarray, shrinkage: float = SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) such that ``(x - mean) @ projection`` has (about) identity covariance."""
    x = np.asarray(embeddings, np.float64)
    n, dim = x.shape
    if n < MIN_IMAGES_PER_DIM * dim:
        raise ValueError(
            f"whitening a {dim}-d embedding needs at least {MIN_IMAGES_PER_DIM * dim} images, got {n}"
        )
    mean = x.mean(axis=0)
    eigenvalues, axes = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    projection = axes / np.sqrt(eigenvalues + shrinkage * eigenvalues.max())
    return mean.astype(np.float32), projection.astype(np.float32)


def whiten_checkpoint(
    embedder, sources: Sources, out: Path, images: int, cache_dir: Path, progress: bool = True
) -> dict:
    """Fit the whitening of ``embedder``'s net on ``images`` training images and save it to ``out``;
    generated images are written under ``cache_dir``."""
    net = embedder.net
    net.whitening.reset()  # fit on what the trained layers say, not on an earlier whitening
    found = gather_paths(sources, cache_dir)
    paths = [p for source_paths in found.values() for p in source_paths]
    if len(paths) < MIN_IMAGES_PER_DIM * embedder.dim:  # say so before minutes of embedding
        raise ValueError(
            f"whitening a {embedder.dim}-d embedding needs at least {MIN_IMAGES_PER_DIM * embedder.dim}"
            f" images; the sources hold {len(paths)} (add --data DIR or more --sources)"
        )
    if images and len(paths) > images:
        keep = np.sort(np.random.default_rng(sources.seed).choice(len(paths), images, replace=False))
        paths = [paths[i] for i in keep]
    pictures = load_images(paths, 2 * embedder.image_size, progress)
    embeddings = embedder.embed_images(pictures, progress=progress)
    mean, projection = fit_whitening(embeddings)
    net.whitening.set(torch.from_numpy(mean), torch.from_numpy(projection))
    record = {
        "images": len(pictures),
        "sources": {name: len(p) for name, p in found.items()},
        "seed": sources.seed,
        "shrinkage": SHRINKAGE,
        "fitted_on": trained_weights_digest(embedder.weights),
    }
    meta = {**embedder.weights.meta, "whitening": record}
    save_checkpoint(net.cpu().float(), out, embedder.image_size, meta)
    return record


def trained_weights_digest(weights) -> str:
    """The file the trained layers came from. Whitening a whitened checkpoint again refits on the
    same layers, so it keeps that name: the result is then the same file as whitening the
    training run's own checkpoint (the reproduction command in the model card)."""
    return weights.meta.get("whitening", {}).get("fitted_on", weights.digest)
