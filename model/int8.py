"""int8 inference with ONNX Runtime: the network's convolutions quantised, the rest in fp32.

The network is exported to ONNX once per model version and quantised statically (QDQ,
per-channel int8 weights, uint8 activations) on calibration images that anyone can make again:
generated photo-like images, edited views of them (the edit families) and scikit-image's
samples. Only Conv, Relu and MaxPool are quantised: GeM (a cube, then a cube root), the head
and the whitening in int8 destroy the embedding. The quantised file is cached in the data
directory, keyed by the model version, the quantisation settings and onnxruntime's version.

ONNX Runtime's int8 kernels are fast only where the CPU has VNNI (AVX-512 VNNI, AVX-VNNI or
AMX); without it they lose accuracy as well (u8 x s8 products saturate), so ``auto`` picks int8
only there (``embedder.pick_precision``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

LOG = logging.getLogger(__name__)

QUANTISED_OPS = ("Conv", "Relu", "MaxPool")
CALIBRATION_SEED = 20261205
# Any change to what ``calibration_images`` makes must change this id: it names the cached file.
CALIBRATION_ID = "cal1"
OPSET = 17


@dataclass(frozen=True)
class QuantSettings:
    """How the network is quantised; ``key`` names a cached file, so any change re-quantises."""

    calibrate: str = "minmax"  # minmax | percentile | entropy
    fp32_last_convs: int = 0  # the last N convolutions stay fp32
    fp32_first_convs: int = 0  # the first N convolutions stay fp32
    images: int = 256  # calibration images
    reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI)
    symmetric_activations: bool = False

    @property
    def key(self) -> str:
        flags = ("r" if self.reduce_range else "") + ("s" if self.symmetric_activations else "")
        return f"{self.calibrate}-n{self.images}-f{self.fp32_first_convs}-l{self.fp32_last_convs}" + (
            f"-{flags}" if flags else ""
        )


SHIPPED_SETTINGS = QuantSettings(fp32_first_convs=1, fp32_last_convs=1)


def ort_missing() -> str | None:
    """Why ONNX Runtime's quantisation cannot be used here, or None when it can."""
    for module in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install onnxruntime onnx)"
    return None


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# calibration images --------------------------------------------------------------------------


def calibration_images(count: int, seed: int = CALIBRATION_SEED) -> list[Image.Image]:
    """``count`` images made here, the same on every machine: scikit-image's samples, generated
    photo-like images and, for every other one, an edited view of it (tilts, borders, crops,
    captions, screenshots, colour changes, ...), so the ranges cover what reindex meets."""
    from twice.augment import FamilyAugment, make_synthetic_image

    images = skimage_samples()[: count // 8]
    views = FamilyAugment(seed)
    index = 0
    while len(images) < count:
        image = make_synthetic_image(seed, index)
        images.append(image if index % 2 == 0 else views(image))
        index += 1
    return images


def skimage_samples() -> list[Image.Image]:
    """scikit-image's bundled RGB and grey samples (none where it is not installed)."""
    try:
        import skimage.data
    except ImportError:
        return []
    names = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "page", "text", "moon")
    names += ("horse", "hubble_deep_field", "immunohistochemistry", "retina", "checkerboard", "clock")
    images = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        array = loader()
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        images.append(Image.fromarray(np.ascontiguousarray(array.astype(np.uint8))).convert("RGB"))
    return images


# export and quantisation ---------------------------------------------------------------------


def export_onnx(net: torch.nn.Module, image_size: int, path: Path) -> None:
    """The fp32 network as ONNX, batch size free."""
    net = net.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        # Whitening.fitted is a Python branch, fixed for the traced model, as it should be.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter is the one measured (bench/results/int8-ort-settings-20261205.md).
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        _export(net, example, path)


def _export(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
        opset_version=OPSET,
    )


def conv_nodes(onnx_path: Path) -> list[str]:
    """The names of the model's Conv nodes, input first."""
    import onnx

    return [node.name for node in onnx.load(str(onnx_path)).graph.node if node.op_type == "Conv"]


def excluded_nodes(onnx_path: Path, settings: QuantSettings) -> list[str]:
    convs = conv_nodes(onnx_path)
    first = convs[: settings.fp32_first_convs]
    last = convs[len(convs) - settings.fp32_last_convs :] if settings.fp32_last_convs else []
    return first + last


def quantize_onnx(
    fp32_path: Path, out_path: Path, batches: Sequence[np.ndarray], settings: QuantSettings
) -> None:
    """Static QDQ quantisation of ``fp32_path`` into ``out_path``, ranges from ``batches``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if settings.calibrate not in methods:
        raise ValueError(f"calibrate must be one of {', '.join(methods)}, not {settings.calibrate!r}")
    with _quiet_root_logger():  # onnxruntime advises pre-processing on the root logger, every time
        quantize_static(
            str(fp32_path),
            str(out_path),
            _Batches(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QInt8 if settings.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTISED_OPS),
            nodes_to_exclude=excluded_nodes(fp32_path, settings),
            calibrate_method=methods[settings.calibrate],
            extra_options={"ActivationSymmetric": settings.symmetric_activations},
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"x": batch}

    def __len__(self) -> int:  # some calibrators size their buffers by it
        return 0


# the session ---------------------------------------------------------------------------------


class OrtNet:
    """An ONNX model as a callable from (N,3,S,S) float32 arrays to (N, dim) float32 embeddings."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: reindex's decode worker shares these cores,
        # and spinning threads starve it (reindex 79.5 -> 85.3 images/s, bare rate unchanged).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def cached_path(models_dir: Path, version: str, settings: QuantSettings = SHIPPED_SETTINGS) -> Path:
    name = f"{version}-{CALIBRATION_ID}-{settings.key}-ort{ort_version()}.onnx"
    return Path(models_dir) / "int8" / name


def load_or_build(
    net: torch.nn.Module,
    preprocess,
    image_size: int,
    version: str,
    models_dir: Path,
    settings: QuantSettings = SHIPPED_SETTINGS,
) -> OrtNet:
    """The int8 network of model ``version``: from the cache, or exported, calibrated and
    quantised now (a minute or more) and cached for the next run."""
    path = cached_path(models_dir, version, settings)
    if not path.exists():
        LOG.info(
            "int8: quantising model %s (%s), once: a minute or two; cached in %s", version, settings.key, path
        )
        build_int8(net, preprocess, image_size, path, settings)
    return OrtNet(path)


def build_int8(
    net: torch.nn.Module, preprocess, image_size: int, path: Path, settings: QuantSettings
) -> None:
    """Export, calibrate and quantise into ``path``, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = torch.stack([preprocess(image) for image in calibration_images(settings.images)]).numpy()
    batches = [tensors[i : i + 16] for i in range(0, len(tensors), 16)]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as work:
        fp32_path = Path(work) / "fp32.onnx"
        export_onnx(net, image_size, fp32_path)
        partial = Path(work) / "int8.onnx"
        quantize_onnx(fp32_path, partial, batches, settings)
        os.replace(partial, path)
