"""The embedding model: VGG-16 trunk + GeM + linear head, weights loading, batch embedding."""

from .embedder import Embedder, Preprocess, pick_device, pick_precision
from .network import ARCHS, EmbeddingNet, GeM
from .weights import (
    RANDOM_WEIGHTS,
    CheckpointError,
    WeightsInfo,
    build_network,
    load_checkpoint,
    save_checkpoint,
    seeded_network,
)

__all__ = [
    "ARCHS",
    "RANDOM_WEIGHTS",
    "CheckpointError",
    "Embedder",
    "EmbeddingNet",
    "GeM",
    "Preprocess",
    "WeightsInfo",
    "build_network",
    "load_checkpoint",
    "pick_device",
    "pick_precision",
    "save_checkpoint",
    "seeded_network",
]
