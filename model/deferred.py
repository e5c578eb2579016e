"""An embedder known by its version before it is built: the network loads on first real use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .version import ModelFacts, model_facts

LOG = logging.getLogger(__name__)


class DeferredEmbedder:
    """Stands in for an ``Embedder``: ``version``, ``dim``, ``image_size`` and ``draft_side``
    come from the checkpoint's header; anything else (``preprocess``, ``embed_tensors``, ...)
    builds the embedder with ``load`` once and is answered by it. A re-run of ``twice
    reindex`` with nothing to embed never imports torch."""

    def __init__(self, facts: ModelFacts, load: Callable[[], Any]) -> None:
        self.version, self.dim, self.image_size = facts.version, facts.dim, facts.image_size
        self.draft_side = facts.draft_side
        self._load = load
        self._lock = threading.Lock()
        self._loaded: Any = None
        self.load_seconds = 0.0  # how long building it took (the int8 network's first build included)

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def embedder(self) -> Any:
        """The embedder itself, built now if it was not yet."""
        with self._lock:
            if self._loaded is None:
                started = time.perf_counter()
                built = self._load()
                self.load_seconds = time.perf_counter() - started
                if built.version != self.version:
                    raise RuntimeError(
                        f"the checkpoint's header says model {self.version}, the network built"
                        f" from it is {built.version}: model_facts and Embedder disagree"
                    )
                self._loaded = built
            return self._loaded

    def __getattr__(self, name: str) -> Any:
        # Only names this object does not hold itself reach here.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.embedder(), name)


def deferred_embedder(options, load: Callable[[], Any]) -> Any:
    """A ``DeferredEmbedder`` for ``options`` when its model's facts read without building it,
    otherwise the embedder ``load`` builds now."""
    facts = model_facts(options)
    if facts is None:
        return load()
    LOG.debug("model %s: loaded only when something needs embedding", facts.version)
    return DeferredEmbedder(facts, load)
