"""A deterministic collection of photo-like synthetic images: demo data and training data.

Three families, so the collection is varied: dead-leaves textures (occluding discs and polygons
with power-law sizes; known to teach a CNN useful low-level statistics), gradients with shapes,
and simple landscape scenes (sky, sun, mountain ridges, ground, trees, houses). Every image
is drawn at twice its size and downsampled (soft edges), then gets a little sensor noise and
is saved as JPEG, so it behaves like a photo in the pipeline. Image ``i`` of seed ``s`` is a
pure function of ``(s, i)``.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LOG = logging.getLogger(__name__)

SUPERSAMPLE = 2
JPEG_QUALITY = 90
RGB = tuple[int, int, int]


def make_collection(
    folder: str | Path, count: int, seed: int = 0, size: tuple[int, int] = (320, 240)
) -> list[Path]:
    """Write ``count`` distinct JPEGs into ``folder`` (files already there are kept) and return
    their paths, in order."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count!r}")
    width, height = size
    if width < 16 or height < 16:
        raise ValueError(f"size must be at least 16x16, not {size!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, made = [], 0
    for i in range(count):
        path = folder / f"synthetic-{seed}-{i:05d}.jpg"
        if not path.exists():
            make_synthetic_image(seed, i, size).save(path, format="JPEG", quality=JPEG_QUALITY)
            made += 1
        paths.append(path)
    LOG.info("synthetic collection %s: %d written, %d already there", folder, made, count - made)
    return paths


def make_synthetic_image(seed: int, index: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Image ``index`` of collection ``seed``: the family rotates with the index, the rest is seeded."""
    rng = np.random.default_rng([seed, index])
    family = FAMILIES[index % len(FAMILIES)]
    big = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    image = family(rng, big).resize(size, Image.Resampling.LANCZOS)
    return add_noise(image, rng, sigma=float(rng.uniform(1.0, 5.0)))


# colour helpers --------------------------------------------------------------------------------


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def random_palette(rng: np.random.Generator, n: int) -> list[RGB]:
    """``n`` colours around a few seeded hues (harmonious, like a real scene's palette)."""
    base = rng.random()
    spread = rng.uniform(0.05, 0.5)
    return [
        hsv(base + rng.normal(0, spread), rng.uniform(0.2, 0.95), rng.uniform(0.2, 1.0)) for _ in range(n)
    ]


def jitter(colour: RGB, rng: np.random.Generator, amount: float) -> RGB:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def gradient(size: tuple[int, int], c0: RGB, c1: RGB, rng: np.random.Generator, radial: bool) -> Image.Image:
    """A linear gradient at a seeded angle, or a radial one around a seeded centre."""
    w, h = size
    # Smooth fields: computed at 1/8 size and upsampled, which costs nothing visible.
    sw, sh = max(2, w // 8), max(2, h // 8)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    if radial:
        cx, cy = rng.uniform(0, sw), rng.uniform(0, sh)
        t = np.hypot(x - cx, y - cy) / np.hypot(sw, sh)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    t = np.clip(t, 0, 1)[..., None]
    pixels = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t
    return Image.fromarray(pixels.astype(np.uint8), "RGB").resize(size, Image.Resampling.BILINEAR)


def add_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(image, np.float32) + rng.normal(0, sigma, (image.height, image.width, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def polygon(
    rng: np.random.Generator, cx: float, cy: float, r: float, sides: int
) -> list[tuple[float, float]]:
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.arange(sides) * 2 * np.pi / sides
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]


# the families ----------------------------------------------------------------------------------


def dead_leaves(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Occluding leaves with radius density ~ r^-3 (scale invariant, like natural images)."""
    w, h = size
    palette = random_palette(rng, int(rng.integers(3, 8)))
    image = Image.new("RGB", size, palette[0])
    draw = ImageDraw.Draw(image)
    rmin, rmax = min(w, h) * rng.uniform(0.01, 0.03), min(w, h) * rng.uniform(0.15, 0.45)
    sides = int(rng.choice([0, 0, 0, 3, 4, 6]))  # 0: discs
    for _ in range(int(rng.integers(200, 450))):
        u = rng.random()
        # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]
        r = 1.0 / np.sqrt(1 / rmin**2 - u * (1 / rmin**2 - 1 / rmax**2))
        cx, cy = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        colour = jitter(palette[int(rng.integers(len(palette)))], rng, 18)
        if sides:
            draw.polygon(polygon(rng, cx, cy, r, sides), fill=colour)
        else:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    if rng.random() < 0.3:  # some out-of-focus ones
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0)))
    return image


def gradient_shapes(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A gradient backdrop with translucent rectangles, ellipses, polygons, stripes and lines."""
    w, h = size
    palette = random_palette(rng, 6)
    image = gradient(size, palette[0], palette[1], rng, radial=rng.random() < 0.4)
    draw = ImageDraw.Draw(image, "RGBA")  # RGBA fills blend onto the RGB image
    for _ in range(int(rng.integers(3, 12))):
        colour = (*jitter(palette[int(rng.integers(2, 6))], rng, 30), int(rng.integers(120, 256)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = min(w, h) * rng.uniform(0.05, 0.35)
        kind = int(rng.integers(5))
        if kind == 0:
            draw.rectangle((cx - r, cy - r * rng.uniform(0.3, 1.5), cx + r, cy + r), fill=colour)
        elif kind == 1:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.4, 1.0), cx + r, cy + r), fill=colour)
        elif kind == 2:
            draw.polygon(polygon(rng, cx, cy, r, int(rng.integers(3, 9))), fill=colour)
        elif kind == 3:
            step = max(4, int(r / 3))
            for x in range(int(cx - r), int(cx + r), 2 * step):
                draw.rectangle((x, cy - r, x + step, cy + r), fill=colour)
        else:
            for _ in range(int(rng.integers(2, 6))):
                points = [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(2)]
                draw.line(points, fill=colour, width=int(rng.integers(2, 12)))
    return image


SKIES = (
    ((70, 130, 210), (200, 225, 250)),  # day
    ((250, 120, 60), (255, 220, 150)),  # sunset
    ((20, 25, 60), (80, 70, 140)),  # dusk
    ((150, 160, 170), (220, 220, 225)),  # overcast
)


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A landscape: sky gradient, sun or moon, mountain ridges, ground, trees and houses."""
    w, h = size
    top, bottom = SKIES[int(rng.integers(len(SKIES)))]
    image = gradient(size, jitter(top, rng, 20), jitter(bottom, rng, 20), rng, radial=False)
    image = _vertical_sky(image, top, bottom, rng)
    draw = ImageDraw.Draw(image)
    sun_r = min(w, h) * rng.uniform(0.04, 0.12)
    sx, sy = rng.uniform(0, w), rng.uniform(0.05, 0.45) * h
    draw.ellipse((sx - sun_r, sy - sun_r, sx + sun_r, sy + sun_r), fill=jitter((255, 235, 180), rng, 20))
    horizon = rng.uniform(0.45, 0.75) * h
    hue = rng.random()
    layers = int(rng.integers(1, 4))
    for layer in range(layers):
        base = horizon - (layers - layer) * h * rng.uniform(0.03, 0.12)
        _ridge(draw, rng, size, base, h * rng.uniform(0.05, 0.25), hsv(hue, 0.3, 0.25 + 0.15 * layer))
    ground = hsv(rng.uniform(0.15, 0.4) if rng.random() < 0.7 else rng.uniform(0.05, 0.12), 0.6, 0.5)
    draw.rectangle((0, horizon, w, h), fill=jitter(ground, rng, 15))
    for _ in range(int(rng.integers(0, 12))):
        _tree(draw, rng, rng.uniform(0, w), rng.uniform(horizon, h), h)
    for _ in range(int(rng.integers(0, 4))):
        _house(draw, rng, rng.uniform(0, w), rng.uniform(horizon + 0.05 * h, h), h)
    return image


def _vertical_sky(image: Image.Image, top: RGB, bottom: RGB, rng: np.random.Generator) -> Image.Image:
    """Blend the seeded gradient with a vertical one: skies are mostly lighter at the horizon."""
    vertical = Image.linear_gradient("L").resize(image.size, Image.Resampling.BILINEAR)
    start = jitter(top, rng, 15)
    bands = [
        vertical.point(lambda v, a=a, b=b: a + (b - a) * v / 255) for a, b in zip(start, bottom, strict=True)
    ]
    tinted = Image.merge("RGB", bands)
    return Image.blend(image, tinted, 0.7)


def _ridge(draw, rng, size, base: float, amplitude: float, colour: RGB) -> None:
    w, h = size
    n = 48
    walk = np.cumsum(rng.normal(0, 1, n))
    walk = np.convolve(walk - walk.mean(), np.ones(5) / 5, mode="same")
    walk = walk / max(float(np.abs(walk).max()), 1e-6) * amplitude
    xs = np.linspace(-10, w + 10, n)
    points = [(float(x), float(base - y)) for x, y in zip(xs, walk, strict=True)]
    draw.polygon(points + [(w + 10, h), (-10, h)], fill=colour)


def _tree(draw, rng, x: float, y: float, h: int) -> None:
    size = h * rng.uniform(0.04, 0.15) * (0.5 + y / h)  # nearer trees look bigger
    draw.rectangle((x - size * 0.08, y - size * 0.3, x + size * 0.08, y), fill=(90, 60, 35))
    green = hsv(rng.uniform(0.22, 0.4), rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.6))
    if rng.random() < 0.5:
        crown = [(x - size * 0.4, y - size * 0.25), (x + size * 0.4, y - size * 0.25), (x, y - size * 1.2)]
        draw.polygon(crown, fill=green)
    else:
        draw.ellipse((x - size * 0.4, y - size * 1.0, x + size * 0.4, y - size * 0.2), fill=green)


def _house(draw, rng, x: float, y: float, h: int) -> None:
    size = h * rng.uniform(0.06, 0.16)
    wall = hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.6, 0.95))
    draw.rectangle((x - size, y - size, x + size, y), fill=wall)
    draw.polygon(
        [(x - size * 1.2, y - size), (x + size * 1.2, y - size), (x, y - size * 1.8)],
        fill=hsv(rng.uniform(0.0, 0.08), 0.7, 0.5),
    )
    draw.rectangle((x - size * 0.2, y - size * 0.6, x + size * 0.2, y), fill=(70, 50, 40))


FAMILIES: tuple[Callable[[np.random.Generator, tuple[int, int]], Image.Image], ...] = (
    dead_leaves,
    gradient_shapes,
    scene,
)
