"""Edit families: the kinds of copies people make, each drawn from ranges rather than points.

A family (``tilt``, ``border``, ``crop``, ...) draws the full parameters of one edit from its
``RANGES`` with a numpy Generator and returns ordinary registry specs, so every drawn edit has a
canonical spec string that ``twice augment --transforms`` replays pixel for pixel:

>>> import numpy as np
>>> [s.canonical for s in draw_edit("tilt", np.random.default_rng(3))]
['tilt:4.5:black:same']

``draw_combo`` stacks 2-3 families, in the order copies travel (crop, geometry, things added,
colour, compression). ``HELD_OUT_FAMILIES`` are never drawn for training, so the bench can
measure how the model does on edits it never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .drawings import CAPTION_POSITIONS
from .fills import colour_name
from .transforms import TransformSpec, format_number, parse_transform

LOG = logging.getLogger(__name__)

HELD_OUT_FAMILIES = ("perspective", "sticker")


@dataclass(frozen=True)
class Uniform:
    """A number drawn uniformly from ``low..high``, rounded to ``digits`` decimals."""

    low: float
    high: float
    digits: int = 2

    def draw(self, rng: np.random.Generator) -> float:
        return round(float(rng.uniform(self.low, self.high)), self.digits)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high


@dataclass(frozen=True)
class Integers:
    """An integer drawn uniformly from ``low..high``, both ends included."""

    low: int
    high: int

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of ``values``, each as likely."""

    values: tuple

    def draw(self, rng: np.random.Generator) -> object:
        return self.values[int(rng.integers(len(self.values)))]

    def __contains__(self, value: object) -> bool:
        return value in self.values


SEEDS = Integers(0, 999_999)  # drawings (captions, stickers, windows) and keystone sides
# "colour": a random rrggbb; the others are the transforms' own fills.
CORNER_FILLS = Choice(("black", "white", "colour", "edge", "blur"))
WATERMARKS = ("twice", "sample", "preview", "stock photo", "@photos", "copyright", "draft", "demo")

RANGES: dict[str, dict[str, Uniform | Integers | Choice]] = {
    "tilt": {"degrees": Uniform(3.0, 20.0, 1), "fill": CORNER_FILLS, "canvas": Choice(("expand", "same"))},
    "border": {
        "sides": Choice(("letterbox", "pillarbox", "frame", "any")),
        "width": Uniform(0.03, 0.25),
        "fill": Choice(("black", "white", "colour", "blur")),
    },
    "crop": {"area": Uniform(0.3, 0.95), "aspect": Uniform(0.6, 1.6), "x": Uniform(0, 1), "y": Uniform(0, 1)},
    "caption": {"where": Choice(CAPTION_POSITIONS), "seed": SEEDS},
    "sticker": {"count": Integers(1, 3), "seed": SEEDS},
    "stretch": {"axis": Choice(("x", "y")), "factor": Uniform(0.6, 1.6)},
    "screenshot": {"seed": SEEDS},
    "perspective": {"strength": Uniform(0.05, 0.35), "seed": SEEDS, "fill": CORNER_FILLS},
    "rotate": {"degrees": Choice((90, 180, 270))},
    "mirror": {},
    "bright": {"amount": Integers(20, 120)},
    "dark": {"amount": Integers(20, 90)},
    "gray": {},
    "blur": {"sigma": Uniform(0.5, 3.0)},
    "jpeg": {"quality": Integers(10, 90)},
    "scale": {"factor": Uniform(0.25, 1.5)},
    "overlay": {"text": Choice(WATERMARKS)},
}
# A stretch or scale this close to 1 is no edit at all: such draws are drawn again.
NEAR_ONE = 0.05


def spec(name: str, *values: object) -> TransformSpec:
    """The registry spec ``name:v1:v2...`` (validated and canonical)."""
    return parse_transform(":".join([name, *(format_number(v) for v in values)]))


def _fill(rng: np.random.Generator, fills: Choice) -> str:
    fill = fills.draw(rng)
    return colour_name(tuple(int(c) for c in rng.integers(0, 256, 3))) if fill == "colour" else fill


def _away_from_one(rng: np.random.Generator, factors: Uniform) -> float:
    while abs((factor := factors.draw(rng)) - 1.0) < NEAR_ONE:
        pass
    return factor


def _tilt(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
    degrees = r["degrees"].draw(rng) * (1 if rng.random() < 0.5 else -1)
    return [spec("tilt", degrees, _fill(rng, r["fill"]), r["canvas"].draw(rng))]


def _border(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
    sides, fill = r["sides"].draw(rng), _fill(rng, r["fill"])
    if sides == "letterbox":
        return [spec("border", fill, r["width"].draw(rng), 0)]
    if sides == "pillarbox":
        return [spec("border", fill, 0, r["width"].draw(rng))]
    if sides == "frame":
        return [spec("border", fill, r["width"].draw(rng))]
    present = rng.random(4) < 0.5
    present[int(rng.integers(4))] = True  # at least one side
    widths = [r["width"].draw(rng) if on else 0 for on in present]
    return [spec("border", fill, *widths)]


def _crop(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
    return [spec("cropbox", *(r[p].draw(rng) for p in ("area", "aspect", "x", "y")))]


def _stretch(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
    axis, factor = r["axis"].draw(rng), _away_from_one(rng, r["factor"])
    return [spec("stretch", factor, 1) if axis == "x" else spec("stretch", 1, factor)]


def _scale(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
    return [spec("scale", _away_from_one(rng, r["factor"]))]


def _params(name: str) -> Callable[[np.random.Generator, dict], list[TransformSpec]]:
    """A family that is one transform whose parameters are RANGES' entries, in order."""

    def draw(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
        return [spec(name, *(ranged.draw(rng) for ranged in r.values()))]

    return draw


def _perspective(rng: np.random.Generator, r: dict) -> list[TransformSpec]:
    return [spec("perspective", r["strength"].draw(rng), r["seed"].draw(rng), _fill(rng, r["fill"]))]


@dataclass(frozen=True)
class Family:
    """A kind of edit; ``stage`` orders families in a combination (lower first)."""

    name: str
    stage: int
    draw: Callable[[np.random.Generator, dict], list[TransformSpec]]
    help: str


CROP, GEOMETRY, ADDED, COLOUR, COMPRESSION = range(5)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("tilt", GEOMETRY, _tilt, "a small rotation, corners black, white, a colour, edge or blur"),
        Family("border", ADDED, _border, "letterbox, pillarbox, a frame or some sides, of a colour or blur"),
        Family("crop", CROP, _crop, "a box of 30-95% of the area, anywhere, aspect changed 0.6-1.6x"),
        Family("caption", ADDED, _params("caption"), "a line of text on a bar or over the picture"),
        Family("sticker", ADDED, _params("sticker"), "1-3 emoji-like stickers"),
        Family("stretch", GEOMETRY, _stretch, "one axis resized 0.6-1.6x"),
        Family("screenshot", ADDED, _params("screenshot"), "inside an application window"),
        Family("perspective", GEOMETRY, _perspective, "a keystone, as photographed at an angle"),
        Family("rotate", GEOMETRY, _params("rotate"), "a quarter or half turn"),
        Family("mirror", GEOMETRY, _params("mirror"), "left-right flip"),
        Family("bright", COLOUR, _params("bright"), "brighter by 20-120"),
        Family("dark", COLOUR, _params("dark"), "darker by 20-90"),
        Family("gray", COLOUR, _params("gray"), "greyscale"),
        Family("blur", COLOUR, _params("blur"), "Gaussian blur, sigma 0.5-3"),
        Family("jpeg", COMPRESSION, _params("jpeg"), "JPEG quality 10-90"),
        Family("scale", GEOMETRY, _scale, "resized 0.25-1.5x"),
        Family("overlay", ADDED, _params("overlay"), "a watermark badge"),
    )
}


def family_names(families: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """``families`` (default: all, in registry order) less ``exclude``; ValueError naming an
    unknown family."""
    chosen = tuple(FAMILIES) if families is None else tuple(dict.fromkeys(families))
    excluded = tuple(exclude)
    for name in (*chosen, *excluded):
        if name not in FAMILIES:
            raise ValueError(f"unknown edit family {name!r}; families: {', '.join(FAMILIES)}")
    kept = tuple(name for name in chosen if name not in excluded)
    if not kept:
        raise ValueError(f"no edit family left to draw from ({chosen!r} less {excluded!r})")
    return kept


def draw_edit(family: str, rng: np.random.Generator) -> list[TransformSpec]:
    """One edit of ``family`` with parameters drawn from its ``RANGES``."""
    (name,) = family_names([family])
    return FAMILIES[name].draw(rng, RANGES[name])


def draw_combo(
    rng: np.random.Generator,
    families: Sequence[str] | None = None,
    k: int | None = None,
    exclude: Iterable[str] = (),
) -> list[TransformSpec]:
    """``k`` different families at once (default 2 or 3, as many as there are), in stage order."""
    pool = family_names(families, exclude)
    if k is None:
        k = int(rng.integers(2, min(3, len(pool)) + 1)) if len(pool) > 1 else 1
    if not 1 <= k <= len(pool):
        raise ValueError(f"k must be in 1..{len(pool)} (the families to draw from), not {k!r}")
    picked = [FAMILIES[pool[i]] for i in rng.choice(len(pool), k, replace=False)]
    return [s for family in sorted(picked, key=lambda f: f.stage) for s in draw_edit(family.name, rng)]
