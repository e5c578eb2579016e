"""One registry of named, deterministic image transforms and their spec strings.

A spec string names a transform and, optionally, its parameters: ``rotate``, ``rotate:180``,
``bright:60``, ``crop:0.8``, ``crop:0.8:7`` (position from seed 7), ``jpeg:30``,
``tilt:10:black``, ``border:white:0.1:0`` (a letterbox). Specs joined by ``+`` are a chain,
applied in order and stored as one variant: ``tilt:10:black+cropbox:0.6:1:0.5:0.5``. Fills
and drawings live in ``fills.py`` and ``drawings.py``; this module owns the registry. The CLI,
the training pipeline and the benchmark all go through ``parse_transform`` and
``apply_transform``, so a name means the same pixels everywhere. The canonical spec (trailing
default parameters dropped, numbers normalised) is what the catalog's ``transform`` column
stores, so ``rotate:90`` and ``rotate`` are the same variant (a chain's is its steps' canonical
specs joined by ``+``).
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

from .drawings import CAPTION_POSITIONS, caption, screenshot, sticker
from .fills import FILLS, HEX_COLOUR, colour_rgb, frame, warp

LOG = logging.getLogger(__name__)

ORIGINAL_FOUR = ("rotate", "mirror", "bright", "dark")
CHAIN = "+"  # joins the steps of one variant
# Characters that separate specs (","), parameters (":") and chained steps cannot appear in text.
SEPARATORS = ",:" + CHAIN


@dataclass(frozen=True)
class Param:
    """One positional parameter of a transform: its type, default and valid values."""

    name: str
    kind: type  # int, float or str
    default: object
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    colour: bool = False  # a str parameter that takes an ``rrggbb`` colour as well as its choices

    def describe(self) -> str:
        if self.choices:
            return "|".join(str(c) for c in self.choices) + ("|RRGGBB" if self.colour else "")
        if self.kind is str:
            return self.name.upper()
        return f"{format_number(self.low)}..{format_number(self.high)}"

    def describe_with_default(self) -> str:
        """``AMOUNT 1..255, default 100``; a default outside the range is a "not given" marker."""
        if self.colour:
            return f"{self.name.upper()} {self.describe()}, default {self.default}"
        if self.kind is str:
            return f"{self.name.upper()} default {self.default!r}"
        text = f"{self.name.upper()} {self.describe()}"
        in_range = self.low is None or self.low <= self.default <= self.high
        return f"{text}, default {format_number(self.default)}" if in_range else text

    def parse(self, text: str, spec: str) -> object:
        """The value of ``text`` for this parameter, or ValueError naming spec and range."""
        value = self._convert(text.strip(), spec)
        if self.colour and HEX_COLOUR.fullmatch(value.lower().removeprefix("#")):
            return value.lower().removeprefix("#")
        if self.kind is str and self.choices is not None:
            value = value.lower()  # like the transform names
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
                    f"transform {spec!r}: {self.name} must be 1..32 printable characters without , : or +"
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
    # values -> the one canonical tuple of values that make the same pixels (e.g. border's sides)
    normalise: Callable[[tuple], tuple] | None = None

    def usage(self) -> str:
        """``crop[:FRACTION[:SEED]]``; choices are spelled out: ``rotate[:90|180|270]``."""
        names = [p.describe() if p.choices and not p.colour else p.name.upper() for p in self.params]
        return self.name + "".join(f"[:{n}" for n in names) + "]" * len(names)

    def describe(self) -> str:
        """The help text plus each parameter's range and default."""
        ranges = "; ".join(p.describe_with_default() for p in self.params if not p.choices or p.colour)
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

    @property
    def steps(self) -> tuple[TransformSpec, ...]:
        """The spec as a chain of one step (what ``TransformChain`` holds several of)."""
        return (self,)

    def __str__(self) -> str:
        return self.canonical

    def apply(self, image: Image.Image) -> Image.Image:
        return self.transform.fn(image.convert("RGB"), *self.values)


@dataclass(frozen=True)
class TransformChain:
    """Registry transforms applied in order and stored as one variant, as a copy passed through
    several hands is: ``tilt:10:black+cropbox:0.6:1:0.5:0.5``."""

    steps: tuple[TransformSpec, ...]

    @property
    def canonical(self) -> str:
        """The steps' canonical specs joined by ``+``."""
        return CHAIN.join(step.canonical for step in self.steps)

    def __str__(self) -> str:
        return self.canonical

    def apply(self, image: Image.Image) -> Image.Image:
        for step in self.steps:
            image = step.apply(image)
        return image


VariantSpec = TransformSpec | TransformChain


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


def tilt(
    image: Image.Image, degrees: float = 10.0, fill: str = "white", canvas: str = "expand"
) -> Image.Image:
    """Rotate by a small angle (clockwise for positive, like ``rotate``); the corners get
    ``fill``. ``expand`` grows the canvas to hold the whole picture; ``same`` keeps the size
    and cuts the picture's corners off, as Pillow's and OpenCV's rotations do by default."""
    expand = canvas == "expand"
    if fill not in ("edge", "blur"):
        resample = Image.Resampling.BICUBIC
        return image.rotate(-degrees, resample=resample, expand=expand, fillcolor=colour_rgb(fill))
    size, coeffs = rotation(image.size, -degrees, expand)
    return warp(image, size, coeffs, fill)


def rotation(
    size: tuple[int, int], degrees: float, expand: bool
) -> tuple[tuple[int, int], tuple[float, ...]]:
    """The canvas size and the output-to-input affine map of ``Image.rotate(degrees, expand=)``
    (counter-clockwise degrees, about the centre), worked out as Pillow does, so the edge and
    blur fills move the picture exactly as the colour fills do."""
    w, h = size
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    c = a * -w / 2 + b * -h / 2 + w / 2
    f = -b * -w / 2 + a * -h / 2 + h / 2
    if expand:
        xs = [a * x + b * y + c for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [-b * x + a * y + f for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
        nw, nh = math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))
        dx, dy = -(nw - w) / 2.0, -(nh - h) / 2.0
        c, f = a * dx + b * dy + c, -b * dx + a * dy + f
        w, h = nw, nh
    return (w, h), (a, b, c, -b, a, f)


def perspective(image: Image.Image, strength: float = 0.2, seed: int = 0, fill: str = "black") -> Image.Image:
    """A keystone, as a photo of a screen or print taken at an angle: one side (drawn from
    ``seed``) shrinks by ``strength`` of its length towards its middle, the other corners
    wander by up to a tenth of that; the size stays, the margins get ``fill``."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    corners = np.array([(0, 0), (w, 0), (w, h), (0, h)], dtype=float)  # clockwise from top-left
    side = int(rng.integers(4))  # top, right, bottom, left: corners side and side + 1
    ends = [side, (side + 1) % 4]
    along = corners[ends[1]] - corners[ends[0]]
    moved = corners.copy()
    moved[ends[0]] += along * strength / 2
    moved[ends[1]] -= along * strength / 2
    moved += rng.uniform(-1, 1, (4, 2)) * strength * 0.1 * np.array([w, h])
    moved = np.clip(moved, 0, [w, h])
    return warp(image, (w, h), homography(moved, corners), fill)


def homography(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """The 8 projective coefficients that take the 4 points ``src`` onto ``dst``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(float(v) for v in np.linalg.solve(np.array(rows), np.array(rhs)))


def border(
    image: Image.Image,
    fill: str = "black",
    top: float = 0.05,
    right: float = -1.0,
    bottom: float = -1.0,
    left: float = -1.0,
) -> Image.Image:
    """Margins of ``fill``, each a fraction of its side (top and bottom of the height, left and
    right of the width), given as in CSS: one width for all sides, top/bottom then
    left/right, top then left/right then bottom, or all four clockwise from the top."""
    top, right, bottom, left = border_sides(top, right, bottom, left)
    w, h = image.size
    return frame(image, round(left * w), round(top * h), round(right * w), round(bottom * h), fill)


def border_sides(top: float, right: float, bottom: float, left: float) -> tuple[float, float, float, float]:
    """The four widths of CSS shorthand, where a negative width means "not given"."""
    right = top if right < 0 else right
    bottom = top if bottom < 0 else bottom
    left = right if left < 0 else left
    return top, right, bottom, left


def shortest_border(values: tuple) -> tuple:
    """border's values in their shortest CSS form, so that equal borders have one spec."""
    fill, *sides = values
    top, right, bottom, left = border_sides(*sides)
    shown = [top, right, bottom, left]
    if left == right:
        shown[3] = -1.0
        if bottom == top:
            shown[2] = -1.0
            if right == top:
                shown[1] = -1.0
    return (fill, *shown)


def pad(image: Image.Image, aspect: float = 1.0, fill: str = "black") -> Image.Image:
    """Bars of ``fill`` on two opposite sides until width / height is ``aspect``: above and
    below (letterbox) when the picture is wider than that, left and right (pillarbox) when it
    is narrower; split evenly, the odd pixel below or right."""
    w, h = image.size
    if w / h > aspect:
        extra = max(0, round(w / aspect) - h)
        return frame(image, 0, extra // 2, 0, extra - extra // 2, fill)
    extra = max(0, round(h * aspect) - w)
    return frame(image, extra // 2, 0, extra - extra // 2, 0, fill)


def cropbox(
    image: Image.Image, area: float = 0.6, aspect: float = 1.0, x: float = 0.5, y: float = 0.5
) -> Image.Image:
    """Keep a box of ``area`` of the picture's area whose width / height is ``aspect`` times
    the picture's, at ``x``, ``y`` of the room left over (0 left / top, 1 right / bottom).
    Where the box would be wider or taller than the picture, it takes the full side and keeps
    the area."""
    box = cropbox_box(image.size, area, aspect, x, y)
    return image.crop(box)


def cropbox_box(
    size: tuple[int, int], area: float, aspect: float, x: float, y: float
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``cropbox`` on a picture of ``size``."""
    w, h = size
    bw, bh = w * math.sqrt(area * aspect), h * math.sqrt(area / aspect)
    if bw > w:
        bw, bh = w, h * area
    elif bh > h:
        bw, bh = w * area, h
    bw, bh = max(1, min(w, round(bw))), max(1, min(h, round(bh)))
    left, top = round(x * (w - bw)), round(y * (h - bh))
    return left, top, left + bw, top + bh


def stretch(image: Image.Image, sx: float = 1.5, sy: float = 1.0) -> Image.Image:
    """Resize width by ``sx`` and height by ``sy``: the aspect changes."""
    w, h = image.size
    return image.resize((max(1, round(w * sx)), max(1, round(h * sy))), Image.Resampling.LANCZOS)


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


SEED_PARAM = Param("seed", int, 0, 0, 2**31 - 1)


def fill_param(default: str) -> Param:
    return Param("fill", str, default, choices=FILLS, colour=True)


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
            (
                Param("degrees", float, 10.0, -45.0, 45.0),
                fill_param("white"),
                Param("canvas", str, "expand", choices=("expand", "same")),
            ),
            False,
            "rotate by a small angle, clockwise; corners get FILL; canvas expanded or the same size",
        ),
        Transform(
            "perspective",
            perspective,
            (Param("strength", float, 0.2, 0.01, 0.6), SEED_PARAM, fill_param("black")),
            False,
            "keystone: the side drawn from SEED shrinks by STRENGTH of its length; margins get FILL",
        ),
        Transform(
            "border",
            border,
            (
                fill_param("black"),
                Param("top", float, 0.05, 0.0, 1.0),
                Param("right", float, -1.0, 0.0, 1.0),
                Param("bottom", float, -1.0, 0.0, 1.0),
                Param("left", float, -1.0, 0.0, 1.0),
            ),
            True,
            "margins of FILL, each a fraction of its side; as in CSS, TOP alone sets all four,"
            " TOP:RIGHT top+bottom and left+right",
            normalise=shortest_border,
        ),
        Transform(
            "pad",
            pad,
            (Param("aspect", float, 1.0, 0.1, 10.0), fill_param("black")),
            True,
            "letterbox or pillarbox: bars of FILL on two sides until width/height = ASPECT",
        ),
        Transform(
            "cropbox",
            cropbox,
            (
                Param("area", float, 0.6, 0.01, 1.0),
                Param("aspect", float, 1.0, 0.1, 10.0),
                Param("x", float, 0.5, 0.0, 1.0),
                Param("y", float, 0.5, 0.0, 1.0),
            ),
            True,
            "keep AREA of the area, ASPECT times the picture's width/height, at X, Y of the room left",
        ),
        Transform(
            "stretch",
            stretch,
            (Param("sx", float, 1.5, 0.05, 4.0), Param("sy", float, 1.0, 0.05, 4.0)),
            False,
            "resize width by SX and height by SY (the aspect changes)",
        ),
        Transform(
            "caption",
            caption,
            (Param("where", str, "bottom", choices=CAPTION_POSITIONS), SEED_PARAM),
            False,
            "a line of text from SEED on a bar added at the bottom or top, or over the picture",
        ),
        Transform(
            "sticker",
            sticker,
            (Param("count", int, 1, 1, 3), SEED_PARAM),
            False,
            "COUNT emoji-like stickers, 5-20% of the shorter side, placed by SEED",
        ),
        Transform(
            "screenshot",
            screenshot,
            (SEED_PARAM,),
            False,
            "the picture inside an application window (title bar, toolbar, panels) drawn from SEED",
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
    if transform.normalise is not None:
        values = transform.normalise(tuple(values))
    return TransformSpec(name, tuple(values))


def parse_variant(spec: str | VariantSpec) -> VariantSpec:
    """One spec, or a chain of specs joined by ``+`` (one variant, its steps applied in order);
    ValueError naming the step that is wrong."""
    if isinstance(spec, TransformSpec | TransformChain):
        return spec
    if not isinstance(spec, str) or CHAIN not in spec:
        return parse_transform(spec)
    parts = spec.split(CHAIN)
    steps = [_parse_step(spec, part, number, len(parts)) for number, part in enumerate(parts, 1)]
    return TransformChain(tuple(steps))


def _parse_step(chain: str, part: str, number: int, count: int) -> TransformSpec:
    where = f"transform chain {chain!r}, step {number} of {count}"
    if not part.strip():
        raise ValueError(f"{where} is empty")
    try:
        return parse_transform(part)
    except ValueError as exc:
        raise ValueError(f"{where} ({part.strip()!r}): {exc}") from None


def parse_transforms(specs: str | Iterable[str | VariantSpec]) -> list[VariantSpec]:
    """A comma-separated list (or iterable) of specs and ``+`` chains, canonical duplicates
    dropped; ``all`` = every registered transform."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    parsed: dict[str, VariantSpec] = {}
    for item in items:
        if not str(item).strip():
            continue
        for spec in all_transforms() if str(item).strip().lower() == "all" else [parse_variant(item)]:
            parsed.setdefault(spec.canonical, spec)
    if not parsed:
        raise ValueError(f"no transforms given; valid transforms: {valid_transforms()}")
    return list(parsed.values())


def all_transforms() -> list[TransformSpec]:
    """Every registered transform with its default parameters."""
    return [parse_transform(name) for name in TRANSFORMS]


def apply_transform(image: Image.Image, spec: str | VariantSpec) -> Image.Image:
    """The RGB image that ``spec`` (or a ``+`` chain) makes of ``image`` (the input is left untouched)."""
    return parse_variant(spec).apply(image)


def apply_transforms(image: Image.Image, specs: Iterable[str | TransformSpec]) -> Image.Image:
    """Apply specs in order (a composition, as the random pipeline records it)."""
    out = image.convert("RGB")
    for spec in specs:
        out = apply_transform(out, spec)
    return out
