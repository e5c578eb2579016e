"""JPEG decoding and preprocessing on the embedding device: the GPU twin of ``Preprocess``.

On CUDA, nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) decodes a batch of JPEGs on the
GPU, and the same squash to a square, black point and standardisation run there as tensor
operations, so the CPU only reads, hashes and stores. Vectors agree with the CPU path to
rounding (the CPU decodes at a reduced JPEG scale and resizes in 8 bits; see tests/test_gpu.py).
Only upright 3-channel or grey JPEGs come here: nvJPEG ignores EXIF turns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def decode_jpegs(encoded: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> (3, H, W) uint8 RGB tensors on ``device`` (one batched call on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in encoded]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision points to TorchCodec; decode_jpeg still works
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def preprocess_tensor(
    image: torch.Tensor, size: int, max_black_point: float | None, std_floor: float
) -> torch.Tensor:
    """A (3, H, W) uint8 RGB tensor -> the standardised (3, size, size) float tensor that
    ``Preprocess`` makes of the same picture (bilinear squash with antialiasing, as PIL's; the
    black point moved to 0 from at most ``max_black_point``, None: left alone)."""
    x = image.unsqueeze(0).float() / 255.0
    tensor = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if max_black_point is not None:
        black = x.amin(dim=(2, 3))[0].clamp(max=max_black_point).view(3, 1, 1)
        tensor = (tensor - black) / (1.0 - black)
    return (tensor - tensor.mean()) / (tensor.std() + std_floor)
