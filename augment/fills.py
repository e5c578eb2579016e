"""What goes where a transform leaves no picture: tilt corners, borders, perspective margins.

A fill is a solid colour (``black``, ``white`` or ``rrggbb``), ``edge`` (the picture's outermost
pixels replicated outwards, OpenCV's BORDER_REPLICATE) or ``blur`` (the picture itself, scaled
to cover the canvas and blurred, behind it, as video and social apps pad). ``frame`` adds
margins around a picture and ``warp`` maps it through a projective transform, both with a fill.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
from PIL import Image, ImageFilter

LOG = logging.getLogger(__name__)

NAMED_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255)}
FILLS = (*NAMED_COLOURS, "edge", "blur")
HEX_COLOUR = re.compile(r"[0-9a-f]{6}")
# Bicubic reads two pixels beyond the one it lands on; padding by more keeps fills out of it.
SUPPORT = 3
BACKDROP_SHRINK = 4


def is_colour(text: str) -> bool:
    return text in NAMED_COLOURS or HEX_COLOUR.fullmatch(text) is not None


def colour_rgb(fill: str) -> tuple[int, int, int]:
    """``black`` / ``white`` / ``rrggbb`` as an RGB tuple; ValueError for anything else."""
    if fill in NAMED_COLOURS:
        return NAMED_COLOURS[fill]
    if HEX_COLOUR.fullmatch(fill) is None:
        raise ValueError(f"fill must be black, white or a colour rrggbb, not {fill!r}")
    return tuple(int(fill[i : i + 2], 16) for i in (0, 2, 4))


def colour_name(rgb: tuple[int, int, int]) -> str:
    """The fill text for an RGB colour: its name where it has one, else ``rrggbb``."""
    for name, named in NAMED_COLOURS.items():
        if tuple(rgb) == named:
            return name
    return "".join(f"{int(c):02x}" for c in rgb)


def backdrop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled to cover ``size`` (centred, overflow cut) and blurred beyond recognition
    of detail, the background apps put behind a picture that does not fill the frame. Blurred
    at a quarter of the size and scaled up: the same look for a sixteenth of the work."""
    small = (max(1, size[0] // BACKDROP_SHRINK), max(1, size[1] // BACKDROP_SHRINK))
    w, h = image.size
    zoom = max(small[0] / w, small[1] / h)
    cover = (max(small[0], math.ceil(w * zoom)), max(small[1], math.ceil(h * zoom)))
    left, top = (cover[0] - small[0]) // 2, (cover[1] - small[1]) // 2
    scaled = image.resize(cover, Image.Resampling.BOX if zoom < 1 else Image.Resampling.BILINEAR)
    scaled = scaled.crop((left, top, left + small[0], top + small[1]))
    blurred = scaled.filter(ImageFilter.GaussianBlur(radius=max(0.5, max(small) / 20)))
    return blurred.resize(size, Image.Resampling.BILINEAR)


def frame(image: Image.Image, left: int, top: int, right: int, bottom: int, fill: str) -> Image.Image:
    """``image`` with margins of these widths (pixels) filled with ``fill``."""
    if min(left, top, right, bottom) < 0:
        raise ValueError(f"margins must be >= 0, not {(left, top, right, bottom)!r}")
    size = (image.width + left + right, image.height + top + bottom)
    if fill == "edge":
        padded = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
        return Image.fromarray(padded, "RGB")
    canvas = backdrop(image, size) if fill == "blur" else Image.new("RGB", size, colour_rgb(fill))
    canvas.paste(image, (left, top))
    return canvas


def warp(image: Image.Image, size: tuple[int, int], coeffs: tuple[float, ...], fill: str) -> Image.Image:
    """``image`` through the map ``coeffs`` takes from output to input pixels (6 numbers:
    affine, 8: projective, as Pillow's ``transform`` reads them) onto a ``size`` canvas, bicubic."""
    method = Image.Transform.AFFINE if len(coeffs) == 6 else Image.Transform.PERSPECTIVE
    resample = Image.Resampling.BICUBIC
    if fill not in ("edge", "blur"):
        return image.transform(size, method, coeffs, resample, fillcolor=colour_rgb(fill))
    if fill == "edge":
        return _warp_padded(image, size, coeffs, _cover_margins(image.size, size, coeffs))
    # Behind the blur only the picture's own rim is seen (through the mask's soft edge): a thin
    # replicated margin gives it clean edges at a fraction of the cost of covering the canvas.
    content = _warp_padded(image, size, coeffs, (SUPPORT,) * 4)
    inside = Image.new("L", image.size, 255)
    mask = inside.transform(size, method, coeffs, Image.Resampling.BILINEAR, fillcolor=0)
    return Image.composite(content, backdrop(image, size), mask)


def _cover_margins(
    image_size: tuple[int, int], size: tuple[int, int], coeffs: tuple[float, ...]
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) padding that puts every output pixel's source on the padded
    picture: where the canvas corners land in the input, plus the bicubic support."""
    a, b, c, d, e, f, g, h = (*coeffs, 0.0, 0.0) if len(coeffs) == 6 else coeffs
    xs, ys = [], []
    for x, y in ((0, 0), (size[0], 0), (size[0], size[1]), (0, size[1])):
        den = g * x + h * y + 1
        xs.append((a * x + b * y + c) / den)
        ys.append((d * x + e * y + f) / den)
    return (
        max(0, math.ceil(-min(xs))) + SUPPORT,
        max(0, math.ceil(-min(ys))) + SUPPORT,
        max(0, math.ceil(max(xs) - image_size[0])) + SUPPORT,
        max(0, math.ceil(max(ys) - image_size[1])) + SUPPORT,
    )


def _warp_padded(
    image: Image.Image, size: tuple[int, int], coeffs: tuple[float, ...], margins: tuple[int, int, int, int]
) -> Image.Image:
    """``warp`` of ``image`` with its edge replicated by ``margins`` (left, top, right, bottom),
    the map shifted to match; whatever lands beyond the margins is black."""
    left, top, right, bottom = margins
    padded = frame(image, left, top, right, bottom, "edge")
    a, b, c, d, e, f, g, h = (*coeffs, 0.0, 0.0) if len(coeffs) == 6 else coeffs
    # input x' = x + left: add left * (denominator) to the numerator, likewise for y.
    shifted = (a + left * g, b + left * h, c + left, d + top * g, e + top * h, f + top, g, h)
    method = Image.Transform.AFFINE if len(coeffs) == 6 else Image.Transform.PERSPECTIVE
    return padded.transform(size, method, shifted[: len(coeffs)], Image.Resampling.BICUBIC)
