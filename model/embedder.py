"""Batch embedding on CPU or CUDA: preprocessing, precision choice, the model version."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from twice.borders import fill_corners, trim_borders

from .int8 import SHIPPED_SETTINGS, OrtNet, QuantSettings, load_or_build, ort_missing
from .network import EmbeddingNet
from .version import draft_side_for, version_string
from .weights import WeightsInfo, build_network, shipped_thresholds

LOG = logging.getLogger(__name__)

# Added to each image's standard deviation, so a nearly flat image is not blown up into noise.
STD_FLOOR = 0.05
# The black point is moved to 0 from at most this level, so the stretch is at most 4x and a
# nearly flat light channel is not blown up into noise.
MAX_BLACK_POINT = 0.75


# Any change to what Preprocess computes must change PREPROCESS_ID (model/version.py).
class Preprocess:
    """RGB PIL image -> standardised (3, size, size) float tensor.

    Uniform borders are trimmed first (``trim_borders``, as the perceptual hash does), so a
    letterboxed or framed copy is squashed as its original is; ``trim=False`` only for measuring
    what trimming does. The content is then resized to a square (no crop): squashing commutes
    with 90° rotations and flips, and so does trimming, so a rotated copy becomes exactly the
    rotated tensor of its original. Each image is then standardised by its own mean and spread
    (over all channels), so a uniform brightening or darkening mostly cancels before the network
    sees it: with random weights that alone lifts recall@1 on "bright +100" from 0.02 to 0.93
    and on "dark -50" from 0.32 to 1.00 (64 px, 120 images; ImageNet's fixed mean/std leave the
    shift in).

    With ``black_point`` each channel is first stretched so that its darkest value in the whole
    image becomes 0 while white stays 1. Brightening lifts every channel and clips it at white,
    often one channel entirely while the others still carry the drawing; one standardisation
    over all channels cannot undo that, the stretch maps the copy back onto its original's
    range (only the clipped highlights stay lost). Images with a black pixel in every channel
    (most) are left as they are. Training turns it off: a brightened view should teach the
    invariance itself, and the shipped weights were trained without it.
    """

    def __init__(self, size: int, black_point: bool = True, trim: bool = True, fill: bool = True) -> None:
        self.size = int(size)
        self.black_point = black_point
        self.trim = trim
        self.fill = fill

    def __call__(self, image: Image.Image, trimmed: bool = False) -> torch.Tensor:
        """``trimmed``: ``image`` is ``trim_borders``' output already (reindex trims once for
        the tensor and the perceptual hashes)."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # read only: no copy
        if self.trim and not trimmed:
            rgb = trim_borders(rgb)
        resized = rgb.resize((self.size, self.size), Image.Resampling.BILINEAR)
        if self.fill:
            resized = fill_corners(resized)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        if self.black_point:
            lows = torch.from_numpy(_channel_minima(rgb).astype(np.float32)) / 255.0
            black = lows.clamp(max=MAX_BLACK_POINT).view(3, 1, 1)
            tensor = (tensor - black) / (1.0 - black)
        return (tensor - tensor.mean()) / (tensor.std() + STD_FLOOR)


def _channel_minima(rgb: Image.Image) -> np.ndarray:
    """(3,) the darkest level of each channel: ``getextrema``'s lows, in a third of its time."""
    return np.asarray(rgb).min(axis=0).min(axis=0)


def pick_device(requested: str = "auto") -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no CUDA GPU")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


PRECISIONS = ("fp32", "bf16", "fp16", "int8")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}
# CPU flags (as /proc/cpuinfo names them) that make bf16 autocast fast, and int8 kernels fast and exact.
FAST_BF16_FLAGS = frozenset({"amx_tile", "avx512_bf16"})
VNNI_FLAGS = frozenset({"amx_tile", "amx_int8", "avx512_vnni", "avx_vnni"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: /proc/cpuinfo's where it exists, else what torch detects."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    cpu = torch.cpu
    checks = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    checks["avx512_vnni"] = "_is_vnni_supported"
    return frozenset(flag for flag, name in checks.items() if getattr(cpu, name, lambda: False)())


def cpu_has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """AMX or AVX-512 bf16: without them bf16 autocast is several times slower than fp32."""
    return bool(FAST_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def pick_precision(
    device: torch.device,
    requested: str = "auto",
    flags: frozenset[str] | None = None,
    int8_missing: str | None = "",
) -> str:
    """fp32, bf16 (autocast), fp16 (autocast) or int8 (ONNX Runtime, CPU only).

    ``auto``: fp16 on CUDA; int8 on a CPU with VNNI (AVX-512 VNNI, AVX-VNNI or AMX) where ONNX
    Runtime is installed; else bf16 on a CPU with AMX or AVX-512 bf16; else fp32. ``flags``:
    the CPU's (default: this one's); ``int8_missing``: why int8 cannot run (None: it can;
    default: ask ``int8.ort_missing``).
    """
    if requested != "auto" and requested not in PRECISIONS:
        raise ValueError(f"precision must be auto, {', '.join(PRECISIONS)}, not {requested!r}")
    if int8_missing == "":
        int8_missing = ort_missing()
    if requested == "int8":
        if device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not on {device.type}")
        if int8_missing:
            raise ValueError(f"precision int8 needs ONNX Runtime: {int8_missing}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    flags = cpu_flags() if flags is None else flags
    if VNNI_FLAGS & flags and not int8_missing:
        return "int8"
    fallback = "bf16" if cpu_has_fast_bf16(flags) else "fp32"
    if VNNI_FLAGS & flags:
        LOG.warning("precision %s, not int8: %s", fallback, int8_missing)
    else:
        LOG.info("precision %s, not int8: this CPU has no VNNI (int8 would be slow and less exact)", fallback)
    return fallback


def model_version(net: EmbeddingNet, image_size: int, weights: WeightsInfo) -> str:
    """Changes whenever the weights, the architecture, the pooling or the preprocessing change."""
    return version_string(net.arch, net.dim, image_size, net.invariance, weights.source, weights.digest)


@dataclass
class Embedder:
    """A network in eval mode plus everything needed to turn images into vectors."""

    net: EmbeddingNet
    weights: WeightsInfo
    image_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    int8: OrtNet | None = None  # the quantised network (``use_int8``), run instead of ``net``

    def __post_init__(self) -> None:
        self.net.eval().to(self.device)
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
        self.preprocess = Preprocess(self.image_size)
        self.draft_side = draft_side_for(self.image_size)  # JPEGs decode at reduced size
        self.version = model_version(self.net, self.image_size, self.weights)
        # On CUDA, reindex hands upright JPEGs over as bytes: nvJPEG decodes them on the GPU.
        self.decodes_on_device = self.device.type == "cuda"

    @classmethod
    def from_options(cls, options) -> Embedder:
        """Build from a ``twice.options.Options``; a checkpoint's own input size wins."""
        net, weights = build_network(
            options.arch,
            options.embed_dim,
            options.checkpoint or None,
            options.allow_download,
            options.invariance,
            options.shipped_checkpoint,
        )
        device = pick_device(options.device)
        size = weights.image_size or options.image_size
        return cls.in_precision(
            net, weights, size, device, pick_precision(device, options.precision), options.models_dir
        )

    @classmethod
    def in_precision(
        cls,
        net: EmbeddingNet,
        weights: WeightsInfo,
        image_size: int,
        device: torch.device,
        precision: str,
        models_dir: Path,
    ) -> Embedder:
        """An embedder running in ``precision`` (``pick_precision``'s answer); int8's quantised
        network is cached in ``models_dir``."""
        embedder = cls(net, weights, image_size, device, AUTOCAST_DTYPES[precision])
        if precision == "int8":
            embedder.use_int8(models_dir)
        return embedder

    def use_int8(self, models_dir: Path, settings: QuantSettings = SHIPPED_SETTINGS) -> None:
        """Run the int8 network from now on: quantised once per model version and cached in
        ``models_dir`` (``model.int8``)."""
        if self.device.type != "cpu":
            raise ValueError(f"int8 runs on the CPU only, not on {self.device}")
        self.int8 = load_or_build(
            self.net, self.preprocess, self.image_size, self.version, models_dir, settings
        )
        self.net.to(memory_format=torch.channels_last)  # the export left it contiguous
        self.autocast_dtype = None

    @property
    def precision(self) -> str:
        if self.int8 is not None:
            return "int8"
        return str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "fp32"

    @property
    def dim(self) -> int:
        return self.net.dim

    @property
    def shipped_thresholds(self) -> dict | None:
        """The verdict rule the checkpoint ships with (None: it ships none)."""
        return shipped_thresholds(self.weights)

    def describe(self) -> dict:
        return {
            "version": self.version,
            "arch": self.net.arch,
            "dim": self.dim,
            "invariance": self.net.invariance,
            "image_size": self.image_size,
            "weights": self.weights.source,
            "device": str(self.device),
            "precision": self.precision,
        }

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """(N,3,S,S) preprocessed tensors (stacked, or a sequence of (3,S,S), where JPEG bytes
        may stand in for a tensor: decoded on the device) -> (N, dim) float32 unit vectors."""
        if not isinstance(batch, torch.Tensor):
            batch = self._stack(list(batch))
        if self.int8 is not None:
            return self.int8(batch.numpy())
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            out = self.net(batch)
        return out.float().cpu().numpy()

    def preprocess_encoded(self, encoded: Sequence[bytes]) -> torch.Tensor:
        """Upright RGB or grey JPEG bytes -> (N,3,S,S) preprocessed tensors, decoded and
        prepared on the device (nvJPEG on CUDA): ``preprocess``'s twin, equal to rounding."""
        from .device_decode import decode_jpegs, preprocess_tensor

        black = MAX_BLACK_POINT if self.preprocess.black_point else None
        images = decode_jpegs(encoded, self.device)
        return torch.stack([preprocess_tensor(x, self.image_size, black, STD_FLOOR) for x in images])

    def _stack(self, items: list) -> torch.Tensor:
        encoded = [i for i, item in enumerate(items) if isinstance(item, bytes)]
        if encoded:
            decoded = self.preprocess_encoded([items[i] for i in encoded])
            for i, tensor in zip(encoded, decoded, strict=True):
                items[i] = tensor
        return torch.stack([item.to(self.device) for item in items])

    def embed_images(
        self, images: Iterable[Image.Image], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """Embed PIL images in the calling process (queries, small batches), a batch at a time."""
        images = list(images)
        chunks = []
        with tqdm(total=len(images), desc="embedding", unit="img", disable=not progress) as bar:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                chunks.append(self.embed_tensors(torch.stack([self.preprocess(image) for image in batch])))
                bar.update(len(batch))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)
