"""Safe image decoding: every image that enters twice goes through ``decode_image``.

Bad input becomes an ``ImageError`` with a short machine-readable ``reason`` and a message
that names the source, so batch jobs can count and skip it and the API can map it to a 4xx.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 80_000_000

_EXIF_ORIENTATION_SWAPS_AXES = frozenset({5, 6, 7, 8})

# Truncated files must fail loudly, never decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is one of the REASONS keys."""

    REASONS = {
        "empty": "zero bytes",
        "too_large": "file larger than the byte limit",
        "not_image": "not an image",
        "truncated": "truncated or corrupt image data",
        "bomb": "too many pixels (decompression bomb guard)",
        "unreadable": "cannot be read",
    }

    def __init__(self, reason: str, source: str, detail: str = "") -> None:
        self.reason = reason
        self.source = source
        self.detail = detail
        text = f"{source}: {self.REASONS[reason]}"
        super().__init__(f"{text} ({detail})" if detail else text)

    def __reduce__(self):
        # Raised in reindex's decode workers and sent back pickled: rebuild from all three parts.
        return type(self), (self.reason, self.source, self.detail)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image with EXIF orientation applied, plus facts about the original bytes."""

    image: Image.Image
    sha256: str
    format: str
    width: int
    height: int
    nbytes: int


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a whole file, refusing it before reading when it is over ``max_bytes``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError("too_large", str(path), f"{size} > {max_bytes} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ImageError("unreadable", str(path), exc.strerror or str(exc)) from exc


def decode_image(
    data: bytes,
    source: str = "<bytes>",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_side: int | None = None,
    sha256: str | None = None,
) -> DecodedImage:
    """Decode bytes into an RGB image (first frame, EXIF-upright) or raise ``ImageError``.

    ``draft_side`` lets JPEG decoding scale down by a power of two while staying at least that
    many pixels on each side: several times faster on photos when only a thumbnail-sized
    image is needed. ``width``/``height`` always describe the full-size upright image.
    ``sha256`` is the bytes' digest where the caller has it (reindex hashes every file first).
    """
    if not data:
        raise ImageError("empty", source)
    if len(data) > max_bytes:
        raise ImageError("too_large", source, f"{len(data)} > {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                fmt = opened.format or "UNKNOWN"
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageError("bomb", source, f"{width}x{height} pixels > {max_pixels}")
                if opened.getexif().get(0x0112, 1) in _EXIF_ORIENTATION_SWAPS_AXES:
                    width, height = height, width
                opened.seek(0)
                if draft_side and opened.format == "JPEG":
                    opened.draft("RGB", (draft_side, draft_side))
                opened.load()
                image = _to_rgb(ImageOps.exif_transpose(opened))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("bomb", source, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not_image", source) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("truncated", source, str(exc)) from exc
    return DecodedImage(image, sha256 or sha256_bytes(data), fmt, width, height, len(data))


def load_image(
    path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Read and decode one file; see ``decode_image``."""
    return decode_image(read_file_bytes(path, max_bytes), str(path), max_bytes, max_pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any mode (palette, alpha, 16-bit, CMYK, grey) onto white RGB."""
    if image.mode == "RGB":
        return image  # decode_image's caller gets a new image from exif_transpose already
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit and 32-bit greys: scale the 16-bit range down to 8 bits.
        grey = np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0, 255)
        image = Image.fromarray(grey.astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def iter_image_files(paths: list[str | Path]):
    """Yield image files (by suffix) under the given files and folders, in a stable order."""
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        if root.is_file():
            yield root
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
