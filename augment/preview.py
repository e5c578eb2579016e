"""A labelled contact sheet of an image and its variants, so a person can see each transform."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from PIL import Image, ImageDraw, ImageFont

from .transforms import VariantSpec, parse_transforms
from .variants import DEFAULT_MAX_SIDE, bound_image

LOG = logging.getLogger(__name__)

BACKGROUND = (235, 235, 235)
INK = (20, 20, 20)


def contact_sheet(
    image: Image.Image,
    specs: str | Iterable[str | VariantSpec],
    cell: int = 200,
    columns: int | None = None,
    label_original: str = "original",
) -> Image.Image:
    """A grid: the original first, then one tile per spec, each labelled with its spec string
    and the variant's size. All tiles share one zoom, so ``scale`` and ``crop`` show as smaller
    and ``tilt`` as larger."""
    if cell < 32:
        raise ValueError(f"cell must be at least 32 pixels, not {cell!r}")
    parsed = parse_transforms(specs)
    image, _ = bound_image(image.convert("RGB"), DEFAULT_MAX_SIDE)
    tiles = [(label_original, image)] + [(s.canonical, s.apply(image)) for s in parsed]
    columns = columns or min(len(tiles), 4)
    if columns < 1:
        raise ValueError(f"columns must be at least 1, not {columns!r}")
    rows = math.ceil(len(tiles) / columns)
    font = ImageFont.load_default(size=max(10, cell // 14))
    label_h = font.size + 8
    pad = 8
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + label_h + pad) + pad), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    zoom = cell / max(max(tile.size) for _, tile in tiles)
    for i, (label, tile) in enumerate(tiles):
        x = pad + (i % columns) * (cell + pad)
        y = pad + (i // columns) * (cell + label_h + pad)
        _paste_centred(sheet, tile, zoom, x, y, cell)
        draw.text((x + 2, y + cell + 3), f"{label}  {tile.width}x{tile.height}", font=font, fill=INK)
    return sheet


def _paste_centred(sheet: Image.Image, tile: Image.Image, zoom: float, x: int, y: int, cell: int) -> None:
    """Paste ``tile`` resized by ``zoom``, centred in the cell x cell box at (x, y)."""
    size = (min(cell, max(1, round(tile.width * zoom))), min(cell, max(1, round(tile.height * zoom))))
    thumb = tile.resize(size, Image.Resampling.LANCZOS)
    sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
