"""Where the network's weights come from, in order of preference, and checkpoint files.

1. an explicit checkpoint path (a twice checkpoint, or a torchvision VGG-16 state dict);
2. the checkpoint shipped with twice (``model/weights/``), when present;
3. torchvision's ImageNet weights, from its cache or downloaded when allowed;
4. a seeded random initialisation, with a loud warning that says how to do better.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from twice.files import file_sha256

from .network import EmbeddingNet
from .version import CHECKPOINT_FORMAT, SHIPPED_CHECKPOINT, checkpoint_for

LOG = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
HEAD_SEED = 0
WHITENING_PREFIX = "whitening."
INIT_ID = "features-init-v2"  # part of every digest that involves seeded random weights
IMAGENET_WEIGHTS = {
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "vgg16_bn": torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1,
}


class CheckpointError(ValueError):
    """A checkpoint file that is missing or not usable; the message names the file."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a network's weights came from: ``source`` is checkpoint, shipped, imagenet or random."""

    source: str
    digest: str  # identifies the exact weights; part of the model version
    image_size: int | None = None  # the size a checkpoint was trained at
    meta: dict = field(default_factory=dict)


# The seeded random init (``seeded_network`` with HEAD_SEED): the fallback and the bench's baseline.
RANDOM_WEIGHTS = WeightsInfo("random", f"random|seed{HEAD_SEED}|{INIT_ID}")


def build_network(
    arch: str,
    dim: int,
    checkpoint: str | Path | None = None,
    allow_download: bool = True,
    invariance: str = "d4",
    use_shipped: bool = True,
) -> tuple[EmbeddingNet, WeightsInfo]:
    """The network with the best weights available (see the module docstring).

    A twice checkpoint brings its own ``invariance`` (the pooling it was trained for); other
    weights get the one asked for.
    """
    if checkpoint:
        return load_checkpoint(checkpoint, arch, dim, invariance)
    if use_shipped and SHIPPED_CHECKPOINT.exists():
        net, info = load_checkpoint(SHIPPED_CHECKPOINT, arch, dim, invariance)
        return net, WeightsInfo("shipped", info.digest, info.image_size, info.meta)
    net = seeded_network(arch, dim, invariance)
    state = imagenet_state_dict(arch, allow_download)
    if state is not None:
        _load_trunk(net, state)
        return net, WeightsInfo("imagenet", f"{IMAGENET_WEIGHTS[arch].url}|head{HEAD_SEED}|{INIT_ID}")
    LOG.warning(
        "NO TRAINED WEIGHTS: twice is using a randomly initialised %s. Duplicates of the same"
        " bytes and light edits are still found, but similarity scores are weak. Fix: pass"
        " --checkpoint PATH (a twice checkpoint from `twice train`, or torchvision's"
        " vgg16-397923af.pth), or put that file in %s/checkpoints/ so torchvision finds it.",
        arch,
        torch.hub.get_dir(),
    )
    return net, RANDOM_WEIGHTS


def imagenet_state_dict(arch: str, allow_download: bool) -> dict | None:
    """torchvision's ImageNet weights from its cache, or downloaded; None when unavailable."""
    weights = IMAGENET_WEIGHTS[arch]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        if cached.exists():
            return torch.load(cached, map_location="cpu", weights_only=True)
        if allow_download:
            quiet = io.StringIO()  # torch.hub prints "Downloading: ..." on stdout or stderr
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # no network, a proxy page, a bad cache file: fall back
        LOG.info("ImageNet weights for %s unavailable: %s", arch, exc)
    return None


def save_checkpoint(
    net: EmbeddingNet, path: str | Path, image_size: int, meta: dict | None = None, half: bool = True
) -> Path:
    """Save trunk + pooling + head (fp16 by default; the whitening stays fp32) with what is needed
    to rebuild the net."""
    state = {
        k: (v.half() if half and v.is_floating_point() and not k.startswith(WHITENING_PREFIX) else v)
        for k, v in net.state_dict().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "arch": net.arch,
            "dim": net.dim,
            "invariance": net.invariance,
            "image_size": image_size,
            "state_dict": state,
            "meta": meta or {},
        },
        tmp,
    )
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path, arch: str = "vgg16", dim: int = 256, invariance: str = "d4"
) -> tuple[EmbeddingNet, WeightsInfo]:
    """Load a twice checkpoint, or a torchvision VGG-16 state dict (trunk only, seeded head)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    digest = file_sha256(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        # Checkpoints written before the d4 pooling existed were trained for a single view.
        net = EmbeddingNet(blob["arch"], blob["dim"], blob.get("invariance", "none"))
        state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
        # Checkpoints from before the whitening existed: the identity.
        for key, value in net.state_dict().items():
            if key.startswith(WHITENING_PREFIX):
                state.setdefault(key, value)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the network ({exc})") from exc
        return net, WeightsInfo("checkpoint", digest, blob.get("image_size"), blob.get("meta", {}))
    if isinstance(blob, dict) and "features.0.weight" in blob:
        net = seeded_network(arch, dim, invariance)
        _load_trunk(net, blob, path)
        return net, WeightsInfo("checkpoint", f"{digest}|head{HEAD_SEED}|{INIT_ID}")
    raise CheckpointError(f"{path}: neither a twice checkpoint nor a torchvision VGG state dict")


THRESHOLDS_META = "thresholds"  # the checkpoint meta key of the verdict rule shipped with it


def shipped_thresholds(info: WeightsInfo) -> dict | None:
    """The verdict rule a checkpoint ships with (``Thresholds.to_shipped``), or None."""
    data = info.meta.get(THRESHOLDS_META) if isinstance(info.meta, dict) else None
    return data if isinstance(data, dict) else None


def read_shipped_thresholds(path: str | Path) -> dict | None:
    """``shipped_thresholds`` of a twice checkpoint file, without building the network."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    meta = blob.get("meta") if isinstance(blob, dict) else None
    return shipped_thresholds(WeightsInfo("checkpoint", "", meta=meta if isinstance(meta, dict) else {}))


def checkpoint_in_use(options) -> Path | None:
    """The twice checkpoint file ``build_network`` loads for ``options`` (None: no file)."""
    return checkpoint_for(options)[0]


def write_shipped_thresholds(source: str | Path, target: str | Path, thresholds: dict) -> Path:
    """A copy of the twice checkpoint ``source`` at ``target`` with ``thresholds`` in its meta.

    The copy's bytes differ, so it is a new model version: fit on ``source``, ship ``target``.
    """
    source, target = Path(source), Path(target)
    blob = torch.load(source, map_location="cpu", weights_only=True)
    if not (isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT):
        raise CheckpointError(f"{source}: not a twice checkpoint; thresholds ship only in one")
    blob["meta"] = {**blob.get("meta", {}), THRESHOLDS_META: thresholds}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(target)
    return target


def seeded_network(arch: str, dim: int, invariance: str = "d4", seed: int = HEAD_SEED) -> EmbeddingNet:
    """A randomly initialised network, the same for the same seed, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbeddingNet(arch, dim, invariance)


def _load_trunk(net: EmbeddingNet, state: dict, path: Path | None = None) -> None:
    """Copy torchvision ``features.*`` weights into the trunk (which lacks the last pool)."""
    trunk = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        net.trunk.load_state_dict(trunk)
    except RuntimeError as exc:
        where = f"{path}: " if path else ""
        raise CheckpointError(f"{where}VGG weights do not fit {net.arch} ({exc})") from exc
