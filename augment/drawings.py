"""Edits that draw on or around a picture: captions, stickers and screenshot chrome.

Everything drawn comes from the transform's seed, so a spec string names the same pixels every
time (given the same font: DejaVu Sans Bold from the Debian package ``fonts-dejavu-core``; where
it is missing, Pillow's own font, with a warning once).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LOG = logging.getLogger(__name__)

FONT_FILE = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
CAPTION_POSITIONS = ("bottom", "top", "over")
CAPTION_VOCABULARY = (
    "when you finally see it monday mood me every time my cat this is fine best day "
    "ever look at that view nobody expected summer vibes throwback weekend goals wait "
    "for true story same real life new photo the plot twist so happy today lol wow"
)
CAPTION_WORDS = tuple(CAPTION_VOCABULARY.split())
BADGE_WORDS = ("NEW", "HOT", "LOL", "WOW", "SALE", "OMG", "TOP", "FREE")
STICKER_SHAPES = ("smiley", "heart", "star", "badge")
# Stickers are drawn this many times larger, then shrunk: smooth edges without ImageDraw anti-aliasing.
SUPERSAMPLE = 4


@functools.cache
def font_file() -> Path | None:
    """DejaVu Sans Bold when installed; None (and a warning, once) when it is not."""
    if FONT_FILE.is_file():
        return FONT_FILE
    LOG.warning(
        "%s not found (Debian package fonts-dejavu-core): captions use Pillow's default font", FONT_FILE
    )
    return None


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_file()
    return ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size=size)


def fitted_font(text: str, size: int, width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font at ``size``, or smaller until ``text`` fits in ``width`` pixels (never below 6)."""
    font = load_font(size)
    length = font.getlength(text)
    if length > width and size > 6:
        font = load_font(max(6, math.floor(size * width / length)))
    return font


def random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, 3))


# captions ---------------------------------------------------------------------------------------


def caption_text(rng: np.random.Generator) -> str:
    words = rng.choice(CAPTION_WORDS, int(rng.integers(2, 6)), replace=False)
    text = " ".join(str(w) for w in words)
    return text.upper() if rng.random() < 0.5 else text.capitalize()


def caption(image: Image.Image, where: str = "bottom", seed: int = 0) -> Image.Image:
    """A line of text from ``seed``: on a bar added above or below the picture (white on
    black or black on white), or ``over`` the lower part of it (white with a dark outline)."""
    rng = np.random.default_rng(seed)
    text = caption_text(rng)
    w, h = image.size
    size = max(6, round(min(w, h) * rng.uniform(0.07, 0.12)))
    font = fitted_font(text, size, int(w * 0.92))
    if where == "over":
        out = image.copy()
        stroke = max(1, font.size // 12)
        draw = ImageDraw.Draw(out)
        y = h - font.size * 1.4
        draw.text(
            (w / 2, y),
            text,
            font=font,
            fill=(255, 255, 255),
            anchor="mm",
            stroke_width=stroke,
            stroke_fill=(0, 0, 0),
        )
        return out
    ink, paper = ((0, 0, 0), (255, 255, 255)) if rng.random() < 0.6 else ((255, 255, 255), (0, 0, 0))
    bar = round(font.size * 1.6)
    out = Image.new("RGB", (w, h + bar), paper)
    out.paste(image, (0, bar if where == "top" else 0))
    ImageDraw.Draw(out).text(
        (w / 2, bar / 2 if where == "top" else h + bar / 2), text, font=font, fill=ink, anchor="mm"
    )
    return out


# stickers ---------------------------------------------------------------------------------------


def sticker(image: Image.Image, count: int = 1, seed: int = 0) -> Image.Image:
    """``count`` emoji-like stickers (smiley, heart, star, word badge), each 5-20% of the
    shorter side, pasted at positions drawn from ``seed``; they may overlap the edges."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    short = min(image.size)
    for _ in range(count):
        side = max(6, round(short * rng.uniform(0.05, 0.2)))
        tile = sticker_tile(str(rng.choice(STICKER_SHAPES)), side, rng)
        x = int(rng.integers(-side // 4, max(1, image.width - side * 3 // 4)))
        y = int(rng.integers(-side // 4, max(1, image.height - side * 3 // 4)))
        out.paste(tile, (x, y), tile)
    return out


def sticker_tile(shape: str, side: int, rng: np.random.Generator) -> Image.Image:
    """One RGBA sticker, ``side`` pixels square."""
    big = side * SUPERSAMPLE
    tile = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    outline = max(1, big // 24)
    box = (outline, outline, big - outline, big - outline)
    if shape == "smiley":
        draw.ellipse(box, fill=(255, 204, 0), outline=(90, 60, 0), width=outline)
        eye = big // 10
        for cx in (big * 0.35, big * 0.65):
            draw.ellipse((cx - eye / 2, big * 0.3, cx + eye / 2, big * 0.3 + eye * 1.6), fill=(60, 40, 0))
        draw.arc(
            (big * 0.25, big * 0.3, big * 0.75, big * 0.75), 20, 160, fill=(60, 40, 0), width=outline * 2
        )
    elif shape == "heart":
        draw.polygon(_heart(big), fill=random_colour(rng, 150) + (255,))
    elif shape == "star":
        draw.polygon(_star(big), fill=random_colour(rng, 120) + (255,), outline=(40, 40, 40))
    else:
        word = str(rng.choice(BADGE_WORDS))
        draw.ellipse(box, fill=random_colour(rng, 0, 200) + (255,), outline=(255, 255, 255), width=outline)
        font = fitted_font(word, big // 3, int(big * 0.75))
        draw.text((big / 2, big / 2), word, font=font, fill=(255, 255, 255), anchor="mm")
    return tile.resize((side, side), Image.Resampling.LANCZOS)


def _heart(big: int) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 60)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    scale = big * 0.9 / 34
    return [(big / 2 + scale * a, big / 2 + scale * (b + 1)) for a, b in zip(x, y, strict=True)]


def _star(big: int) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        radius = big * (0.48 if i % 2 == 0 else 0.2)
        angle = math.pi * i / 5 - math.pi / 2
        points.append((big / 2 + radius * math.cos(angle), big / 2 + radius * math.sin(angle)))
    return points


# screenshots ------------------------------------------------------------------------------------

LIGHT = {"window": (246, 246, 246), "bar": (225, 225, 228), "panel": (236, 236, 240), "ink": (150, 150, 160)}
DARK = {"window": (32, 33, 36), "bar": (53, 54, 58), "panel": (41, 42, 45), "ink": (120, 122, 130)}


def screenshot(image: Image.Image, seed: int = 0) -> Image.Image:
    """``image`` at its own size inside an application window drawn from ``seed``: a title bar,
    perhaps a toolbar with an address field, a side panel with list lines, a status bar."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    theme = DARK if rng.random() < 0.4 else LIGHT
    unit = max(4, round(max(w, h) * rng.uniform(0.03, 0.05)))
    title = round(unit * rng.uniform(1.0, 1.5))
    toolbar = round(unit * rng.uniform(1.2, 2.0)) if rng.random() < 0.7 else 0
    status = round(unit * 0.8) if rng.random() < 0.6 else 0
    panel = round(w * rng.uniform(0.15, 0.35)) if rng.random() < 0.6 else 0
    panel_left = rng.random() < 0.7
    margin = round(unit * rng.uniform(0.3, 1.5))
    size = (w + panel + 2 * margin, h + title + toolbar + status + 2 * margin)
    out = Image.new("RGB", size, theme["window"])
    draw = ImageDraw.Draw(out)
    _title_bar(draw, size[0], title, theme, rng)
    if toolbar:
        _toolbar(draw, size[0], title, toolbar, theme, rng)
    if status:
        draw.rectangle((0, size[1] - status, size[0], size[1]), fill=theme["bar"])
        _text_lines(draw, (unit, size[1] - status, size[0] // 3, size[1]), 1, theme["ink"], rng)
    top = title + toolbar
    if panel:
        x0 = 0 if panel_left else size[0] - panel
        draw.rectangle((x0, top, x0 + panel, size[1] - status), fill=theme["panel"])
        rows = max(1, (size[1] - status - top) // (unit * 2))
        _text_lines(
            draw,
            (x0 + unit // 2, top + unit // 2, x0 + panel - unit // 2, size[1] - status),
            rows,
            theme["ink"],
            rng,
        )
    out.paste(image, ((panel if panel_left else 0) + margin, top + margin))
    return out


def _title_bar(
    draw: ImageDraw.ImageDraw, width: int, height: int, theme: dict, rng: np.random.Generator
) -> None:
    draw.rectangle((0, 0, width, height), fill=theme["bar"])
    r = max(2, height // 4)
    if rng.random() < 0.5:  # traffic lights on the left
        for i, colour in enumerate(((255, 95, 87), (254, 188, 46), (40, 200, 64))):
            cx = r * 2 + i * r * 3
            draw.ellipse((cx - r, height / 2 - r, cx + r, height / 2 + r), fill=colour)
    else:  # minimise, maximise, close on the right
        for i in range(3):
            cx = width - r * 2 - i * r * 4
            draw.rectangle((cx - r, height / 2 - r, cx + r, height / 2 + r), outline=theme["ink"], width=1)
    _text_lines(draw, (width // 3, 0, width * 2 // 3, height), 1, theme["ink"], rng)


def _toolbar(draw, width: int, top: int, height: int, theme: dict, rng: np.random.Generator) -> None:
    draw.rectangle((0, top, width, top + height), fill=theme["panel"])
    icon = max(2, height // 2)
    x = icon // 2
    for _ in range(int(rng.integers(2, 5))):
        draw.rounded_rectangle(
            (x, top + icon // 2, x + icon, top + icon // 2 + icon), radius=icon // 4, fill=theme["ink"]
        )
        x += icon * 3 // 2
    field = (x + icon, top + height * 0.2, width - icon, top + height * 0.8)
    if field[2] > field[0]:
        draw.rounded_rectangle(field, radius=max(1, height // 4), fill=theme["window"], outline=theme["ink"])


def _text_lines(draw, box: tuple, rows: int, ink: tuple, rng: np.random.Generator) -> None:
    """``rows`` grey bars of random length standing in for text, evenly down ``box``."""
    x0, y0, x1, y1 = box
    step = (y1 - y0) / rows
    thick = max(1, step / 4)
    for i in range(rows):
        y = y0 + step * (i + 0.5)
        length = (x1 - x0) * rng.uniform(0.3, 1.0)
        draw.rounded_rectangle((x0, y - thick / 2, x0 + length, y + thick / 2), radius=thick / 2, fill=ink)
