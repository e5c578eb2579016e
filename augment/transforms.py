"""One registry of named, deterministic image transforms and their spec strings.

A spec string names a transform and, optionally, its parameters: ``rotate``, ``rotate:180``,
``bright:60``, ``crop:0.8``, ``crop:0.8:7`` (position from seed 7), ``jpeg:30``. The CLI,
the training pipeline and the benchmark all go through ``parse_transform`` and
``apply_transform``, so a name means the same pixels everywhere. The canonical spec (trailing
default parameters dropped, numbers normalised) is what the catalog's ``transform`` column
stores, so ``rotate:90`` and ``rotate`` are the same variant.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from twice.hashing import shifted

LOG = logging.getLogger(__name__)

ORIGINAL_FOUR = ("rotate", "mirror", "bright", "dark")
# Characters that separate specs (",") and parameters (":") cannot appear in text.
SEPARATORS = ",:"
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Param:
    """One positional parameter of a transform: its type, default and valid values."""

    name: str
    kind: type  # int, float or str
    default: object
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices:
            return "|".join(str(c) for c in self.choices)
        if self.kind is str:
            return self.name.upper()
        return f"{format_number(self.low)}..{format_number(self.high)}"

    def describe_with_default(self) -> str:
        """``AMOUNT 1..255, default 100``; a default outside the range is a "not given" marker."""
        if self.kind is str:
            return f"{self.name.upper()} default {self.default!r}"
        text = f"{self.name.upper()} {self.describe()}"
        in_range = self.low is None or self.low <= self.default <= self.high
        return f"{text}, default {format_number(self.default)}" if in_range else text

    def parse(self, text: str, spec: str) -> object:
        """The value of ``text`` for this parameter, or ValueError naming spec and range."""
        value = self._convert(text.strip(), spec)
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"transform {spec!r}: {self.name} must be one of {self.describe()}, not {text!r}"
            )
        if self.low is not None and not (self.low <= value <= self.high):
            raise ValueError(f"transform {spec!r}: {self.name} must be in {self.describe()}, not {text!r}")
        return value

    def _convert(self, text: str, spec: str) -> object:
        if self.kind is str:
            if not text or len(text) > 32 or any(c in SEPARATORS for c in text) or not text.isprintable():
                raise ValueError(
                    f"transform {spec!r}: {self.name} must be 1..32 printable characters without , or :"
                )
            return text
        try:
            value = self.kind(float(text)) if self.kind is int and _is_integral(text) else self.kind(text)
        except ValueError:
            raise ValueError(
                f"transform {spec!r}: {self.name} must be {'an integer' if self.kind is int else 'a number'}"
                f" in {self.describe()}, not {text!r}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"transform {spec!r}: {self.name} must be finite, not {text!r}")
        return value


@dataclass(frozen=True)
class Transform:
    """A named transform: ``fn(image, *params) -> image`` on RGB images."""

    name: str
    fn: Callable[..., Image.Image]
    params: tuple[Param, ...]
    exact: bool  # pixel-exact and lossless: stored as PNG, tested against hand values
    help: str

    def usage(self) -> str:
        """``crop[:FRACTION[:SEED]]``; choices are spelled out: ``rotate[:90|180|270]``."""
        names = [p.describe() if p.choices else p.name.upper() for p in self.params]
        return self.name + "".join(f"[:{n}" for n in names) + "]" * len(names)

    def describe(self) -> str:
        """The help text plus each parameter's range and default."""
        ranges = "; ".join(p.describe_with_default() for p in self.params if not p.choices)
        return f"{self.help} ({ranges})" if ranges else self.help


@dataclass(frozen=True)
class TransformSpec:
    """A parsed spec: transform name plus the full parameter values (defaults filled in)."""

    name: str
    values: tuple

    @property
    def transform(self) -> Transform:
        return TRANSFORMS[self.name]

    @property
    def canonical(self) -> str:
        """``name[:p1[:p2]]`` with trailing default parameters dropped."""
        shown = list(self.values)
        params = self.transform.params
        while shown and shown[-1] == params[len(shown) - 1].default:
            shown.pop()
        return ":".join([self.name, *(format_number(v) for v in shown)])

    def __str__(self) -> str:
        return self.canonical

    def apply(self, image: Image.Image) -> Image.Image:
        return self.transform.fn(image.convert("RGB"), *self.values)


def format_number(value: object) -> str:
    """Shortest text for a parameter value: 0.80 -> '0.8', 2.0 -> '2'."""
    if isinstance(value, float):
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    return str(value)


def _is_integral(text: str) -> bool:
    """'90' and '90.0' are integers; '90.5' is not (int() would refuse it anyway)."""
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number) and number == int(number)


# the transforms ------------------------------------------------------------------------------

# PIL names rotations counter-clockwise; twice's "rotate" is clockwise like the original system.
CLOCKWISE = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def rotate(image: Image.Image, degrees: int = 90) -> Image.Image:
    return image.transpose(CLOCKWISE[degrees])


def mirror(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def flip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def bright(image: Image.Image, amount: int = 100) -> Image.Image:
    return shifted(image, amount)  # the same pixels as the catalog's stored bright view


def dark(image: Image.Image, amount: int = 50) -> Image.Image:
    return shifted(image, -amount)


def gray(image: Image.Image) -> Image.Image:
    """ITU-R 601 luma (Pillow's "L"), back in RGB so every transform returns RGB."""
    return image.convert("L").convert("RGB")


def crop(image: Image.Image, fraction: float = 0.8, seed: int = -1) -> Image.Image:
    """Keep ``fraction`` of each side: centred, or at a position drawn from ``seed`` (>= 0)."""
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    if seed < 0:
        left, top = (w - cw) // 2, (h - ch) // 2
    else:
        rng = np.random.default_rng(seed)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((left, top, left + cw, top + ch))


def jpeg(image: Image.Image, quality: int = 50) -> Image.Image:
    """The image as a JPEG of this quality would decode: real compression artefacts."""
    with Image.open(io.BytesIO(encode_jpeg(image, quality))) as decoded:
        return decoded.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def scale(image: Image.Image, factor: float = 0.5) -> Image.Image:
    w, h = image.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def blur(image: Image.Image, sigma: float = 2.0) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))  # Pillow's radius is the sigma


def tilt(image: Image.Image, degrees: float = 10.0) -> Image.Image:
    """Rotate by a small angle (clockwise for positive, like ``rotate``) on an expanded white canvas."""
    return image.rotate(-degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)


def overlay(image: Image.Image, text: str = "twice") -> Image.Image:
    """Stamp a semi-transparent badge with ``text`` in the lower right corner (a watermark)."""
    w, h = image.size
    size = max(8, min(w, h) // 8)
    font = ImageFont.load_default(size=size)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    x1, y1 = w - pad, h - pad
    x0, y0 = x1 - (right - left) - 2 * pad - size, y1 - (bottom - top) - 2 * pad
    draw.rounded_rectangle((x0, y0, x1, y1), radius=pad, fill=(0, 0, 0, 140))
    dot = (x0 + pad, y0 + pad, x0 + pad + size * 3 // 4, y0 + pad + size * 3 // 4)
    draw.ellipse(dot, fill=(255, 200, 0, 230))  # the "logo" beside the text
    draw.text((x0 + pad + size - left, y0 + pad - top), text, font=font, fill=(255, 255, 255, 230))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform(
            "rotate",
            rotate,
            (Param("degrees", int, 90, choices=(90, 180, 270)),),
            True,
            "quarter turns clockwise (plain rotate = 90° clockwise)",
        ),
        Transform("mirror", mirror, (), True, "left-right flip"),
        Transform("flip", flip, (), True, "top-bottom flip"),
        Transform(
            "bright",
            bright,
            (Param("amount", int, 100, 1, 255),),
            True,
            "add AMOUNT to every channel, clipped to 255",
        ),
        Transform(
            "dark",
            dark,
            (Param("amount", int, 50, 1, 255),),
            True,
            "subtract AMOUNT from every channel, clipped to 0",
        ),
        Transform("gray", gray, (), True, "greyscale (ITU-R 601 luma)"),
        Transform(
            "crop",
            crop,
            (Param("fraction", float, 0.8, 0.05, 1.0), Param("seed", int, -1, 0, 2**31 - 1)),
            True,
            "keep FRACTION of each side, centred, or placed at random by SEED",
        ),
        Transform("jpeg", jpeg, (Param("quality", int, 50, 1, 95),), False, "re-encode as JPEG of QUALITY"),
        Transform("scale", scale, (Param("factor", float, 0.5, 0.05, 2.0),), False, "resize by FACTOR"),
        Transform("blur", blur, (Param("sigma", float, 2.0, 0.1, 20.0),), False, "Gaussian blur of SIGMA px"),
        Transform(
            "tilt",
            tilt,
            (Param("degrees", float, 10.0, -45.0, 45.0),),
            False,
            "rotate by a small angle, clockwise, canvas expanded",
        ),
        Transform("overlay", overlay, (Param("text", str, "twice"),), False, "stamp a watermark with TEXT"),
    )
}


def valid_transforms() -> str:
    """The valid spec forms, for error messages and --help."""
    return ", ".join(t.usage() for t in TRANSFORMS.values())


def parse_transform(spec: str | TransformSpec) -> TransformSpec:
    """Parse ``name[:param[:param]]``; ValueError listing the valid transforms if it is wrong."""
    if isinstance(spec, TransformSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"transform spec must be a string, not {spec!r}")
    name, *texts = spec.strip().split(":")
    name = name.strip().lower()
    transform = TRANSFORMS.get(name)
    if transform is None:
        raise ValueError(f"unknown transform {spec!r}; valid transforms: {valid_transforms()}")
    if len(texts) > len(transform.params):
        raise ValueError(
            f"transform {spec!r} takes at most {len(transform.params)} parameter(s): {transform.usage()}"
        )
    values = [p.parse(t, spec) for p, t in zip(transform.params, texts, strict=False)]
    values += [p.default for p in transform.params[len(values) :]]
    return TransformSpec(name, tuple(values))


def parse_transforms(specs: str | Iterable[str]) -> list[TransformSpec]:
    """A comma-separated list (or iterable) of specs, canonical duplicates dropped; ``all`` = every one."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    parsed: dict[str, TransformSpec] = {}
    for item in items:
        if not str(item).strip():
            continue
        for spec in all_transforms() if str(item).strip().lower() == "all" else [parse_transform(item)]:
            parsed.setdefault(spec.canonical, spec)
    if not parsed:
        raise ValueError(f"no transforms given; valid transforms: {valid_transforms()}")
    return list(parsed.values())


def all_transforms() -> list[TransformSpec]:
    """Every registered transform with its default parameters."""
    return [parse_transform(name) for name in TRANSFORMS]


def apply_transform(image: Image.Image, spec: str | TransformSpec) -> Image.Image:
    """The RGB image that ``spec`` makes of ``image`` (the input is left untouched)."""
    return parse_transform(spec).apply(image)


def apply_transforms(image: Image.Image, specs: Iterable[str | TransformSpec]) -> Image.Image:
    """Apply specs in order (a composition, as the random pipeline records it)."""
    out = image.convert("RGB")
    for spec in specs:
        out = apply_transform(out, spec)
    return out
