"""The embedding model: VGG-16 trunk + GeM + linear head, weights loading, batch embedding."""

import lazy_loader

# Names load on first use, so importing the package (for one small part) stays light.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "embedder": ["Embedder", "Preprocess", "pick_device", "pick_precision"],
        "network": ["ARCHS", "EmbeddingNet", "GeM"],
        "weights": [
            "RANDOM_WEIGHTS",
            "CheckpointError",
            "WeightsInfo",
            "build_network",
            "load_checkpoint",
            "save_checkpoint",
            "seeded_network",
        ],
    },
)
