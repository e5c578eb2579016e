"""Real images made by the tests: distinct, seeded, cheap to generate."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A distinct RGB picture: a smooth colour field with a few seeded shapes on it."""
    rng = np.random.default_rng(seed)
    field = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    return image


def image_bytes(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def write_images(folder: Path, count: int, start: int = 0, fmt: str = "PNG") -> list[Path]:
    """``count`` distinct images saved as ``folder/img_<seed>.<ext>``."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[fmt]
    paths = []
    for seed in range(start, start + count):
        path = folder / f"img_{seed:04d}{suffix}"
        make_image(seed).save(path, format=fmt)
        paths.append(path)
    return paths


def pale_art(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """Light-grey (160-230) blobs and two dark outlines on white: ``bright`` (+100) clips the
    blobs to white and leaves only the outlines, so its plain hash moves far."""
    return _blobs_and_outlines(seed, size, "white", (160, 231), 40)


def dusk_art(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """Near-black (15-49) blobs and two light outlines on black: ``dark`` (-50) clips the blobs
    to black and leaves only the outlines."""
    return _blobs_and_outlines(seed, size, "black", (15, 50), 200)


def _blobs_and_outlines(seed, size, background, greys, outline) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(5):
        (x0, x1), (y0, y1) = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
        grey = int(rng.integers(*greys))
        draw.ellipse((x0, y0, x1 + 8, y1 + 8), fill=(grey, grey, grey))
    for _ in range(2):
        (x0, x1), (y0, y1) = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
        draw.rectangle((x0, y0, x1 + 6, y1 + 6), outline=(outline,) * 3, width=2)
    return image
