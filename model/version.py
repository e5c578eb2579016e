"""The model version without the model: read from a twice checkpoint's header, without torch.

Every vector in an index comes from one model version, so every reindex needs the version
before it does anything; building the network for it (importing torch, initialising and
loading VGG-16) costs seconds, which a re-run with nothing to embed would spend for nothing.
A twice checkpoint is a zip (``torch.save``) whose ``data.pkl`` holds the architecture, size
and input size beside the tensors: a restricted unpickler reads those and skips the tensors.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

from twice.files import file_sha256

LOG = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "twice-embedder"
SHIPPED_CHECKPOINT = Path(__file__).parent / "weights" / "twice-vgg16.pt"
# Any change to ``Preprocess`` (model/embedder.py) must change this id: it is part of the version.
PREPROCESS_ID = "jpegdraft2x-trim-squash-bilinear-blackpoint-standardise-v4"
HEADER_KEYS = ("format", "arch", "dim", "invariance", "image_size")


def version_string(arch: str, dim: int, image_size: int, invariance: str, source: str, digest: str) -> str:
    """Changes whenever the weights, the architecture, the pooling or the preprocessing change."""
    key = f"{arch}|{dim}|{image_size}|{PREPROCESS_ID}|{invariance}|{digest}"
    short = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{arch}-d{dim}-s{image_size}-{invariance}-{source}-{short}"


def draft_side_for(image_size: int) -> int:
    """How small a JPEG may be decoded for this input size (``decode_image``'s ``draft_side``):
    twice the side, so trimmed borders and the squash still start from enough pixels."""
    return 2 * int(image_size)


@dataclass(frozen=True)
class ModelFacts:
    """What an index and the decode workers need to know of a model before it is built."""

    version: str
    dim: int
    image_size: int

    @property
    def draft_side(self) -> int:
        return draft_side_for(self.image_size)


def model_facts(options) -> ModelFacts | None:
    """The facts of the model ``Embedder.from_options(options)`` builds, when its weights are a
    twice checkpoint whose header reads without torch; None otherwise (build it to know)."""
    path, source = checkpoint_for(options)
    if path is None:
        return None
    header = read_checkpoint_header(path)
    if header is None or header.get("format") != CHECKPOINT_FORMAT:
        return None
    size = header.get("image_size") or options.image_size
    invariance = header.get("invariance", "none")  # checkpoints from before the d4 pooling
    version = version_string(header["arch"], header["dim"], size, invariance, source, file_sha256(path))
    return ModelFacts(version, int(header["dim"]), int(size))


def draft_side_of(options) -> int:
    """The ``draft_side`` of the embedder ``options`` builds, without building it: search
    decodes a query with it, so whatever compares with a query decodes the same way."""
    facts = model_facts(options)
    return facts.draft_side if facts is not None else draft_side_for(options.image_size)


def checkpoint_for(options) -> tuple[Path | None, str]:
    """The checkpoint file ``build_network`` loads for ``options`` and the source it records."""
    if options.checkpoint:
        return Path(options.checkpoint), "checkpoint"
    if options.shipped_checkpoint and SHIPPED_CHECKPOINT.exists():
        return SHIPPED_CHECKPOINT, "shipped"
    return None, ""


class _HeaderUnpickler(pickle.Unpickler):
    """Loads a checkpoint's dicts, lists and numbers; every tensor (torch's rebuild functions and
    storages) becomes None, and any other class is refused."""

    SAFE = {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if module == "torch" or module.startswith("torch."):
            return _skipped
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not read from a checkpoint header")

    def persistent_load(self, pid):
        return None


def _skipped(*_args, **_kwargs) -> None:
    return None


def read_checkpoint_header(path: str | Path) -> dict | None:
    """``HEADER_KEYS`` of a ``torch.save``d dict, without torch and without reading its tensors;
    None when the file is not such a zip (an older pickle format, not a checkpoint at all)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickled) != 1:
                return None
            with archive.open(pickled[0]) as handle:
                blob = _HeaderUnpickler(handle).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        LOG.debug("no checkpoint header read from %s: %s", path, exc)
        return None
    if not isinstance(blob, dict):
        return None
    return {key: blob[key] for key in HEADER_KEYS if key in blob}
