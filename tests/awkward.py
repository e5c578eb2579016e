"""Awkward real image files: odd modes and formats that must decode, and bad input that must not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from imagegen import image_bytes, make_image


def _save(image: Image.Image, fmt: str, **args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **args)
    return buffer.getvalue()


def good_images() -> dict[str, bytes]:
    """Valid files in awkward shapes; each must decode to an RGB image."""
    base = make_image(100, (64, 48))
    grey16 = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    palette = base.convert("RGBA")
    palette.putalpha(Image.new("L", base.size, 128))
    frames = [make_image(seed, (32, 32)) for seed in (1, 2, 3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return {
        "cmyk.jpg": _save(base.convert("CMYK"), "JPEG"),
        "grey.png": _save(base.convert("L"), "PNG"),
        "grey16.png": _save(grey16, "PNG"),
        "palette_alpha.png": _save(palette.convert("P"), "PNG"),
        "rgba.png": _save(palette, "PNG"),
        "animated.gif": animated.getvalue(),
        "photo.webp": _save(base, "WEBP"),
        "scan.tiff": _save(base, "TIFF"),
        "old.bmp": _save(base, "BMP"),
        "exif_rotated.jpg": exif_rotated_jpeg(),
    }


def exif_rotated_jpeg() -> bytes:
    """A 64x48 JPEG whose EXIF says 'rotate 90° clockwise to view' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(make_image(101, (64, 48)), "JPEG", exif=exif.tobytes())


def bomb_png(side: int = 12_000) -> bytes:
    """A tiny file that claims side x side pixels (a decompression bomb)."""
    return _save(Image.new("1", (side, side)), "PNG", optimize=True)


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Bad files and the ``ImageError.reason`` each must produce."""
    jpeg = image_bytes(make_image(102, (64, 48)), "JPEG")
    return {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is a text file posing as a JPEG\n" * 10, "not_image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "bomb.png": (bomb_png(), "bomb"),
    }
