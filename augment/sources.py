"""Image sources for training and measuring: generated scenes, scikit-image's samples and
Debian's clip-art packages (``openclipart-png``, ``tuxpaint-stamps-default``).

The bench's default draw (``HELD_OUT_DRAW``) lives here, beside the sources, so that training can
leave those images out and the bench measures images the model never saw.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import make_synthetic_image

LOG = logging.getLogger(__name__)

SOURCE_NAMES = ("synthetic", "skimage", "openclipart", "tuxpaint")
# Debian package -> folder its PNGs live in.
APT_SOURCES = {
    "openclipart": ("openclipart-png", Path("/usr/share/openclipart/png")),
    "tuxpaint": ("tuxpaint-stamps-default", Path("/usr/share/tuxpaint/stamps")),
}
# scikit-image samples that ship inside the wheel (no download); `cat` is `chelsea` again.
SKIMAGE_SAMPLES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "cell",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


@dataclass(frozen=True)
class Draw:
    """A seeded draw of ``total`` images from the named sources (see ``draw_pool``)."""

    sources: tuple[str, ...] = SOURCE_NAMES
    total: int = 400
    seed: int = 0


# What `twice bench quality` draws by default (originals + distractors + negatives, seed 0).
HELD_OUT_DRAW = Draw()


@dataclass(frozen=True)
class Candidate:
    """One image a source can give, loaded only when chosen."""

    source: str
    name: str
    load: Callable[[], Image.Image]


@dataclass
class ImageSource:
    """A named source's candidates and a note on what it gave or why it gave nothing."""

    name: str
    candidates: list[Candidate] = field(default_factory=list)
    note: str = ""


# set-up: Debian packages ------------------------------------------------------------------


def ensure_apt_sources(names: Sequence[str] = tuple(APT_SOURCES), install: bool = True) -> dict[str, str]:
    """Make the Debian image packages present (apt-get, as root) and say what happened to each."""
    notes, updated = {}, False
    for name in names:
        package, folder = APT_SOURCES[name]
        if folder.is_dir():
            notes[name] = "present"
            continue
        if not install:
            notes[name] = f"skipped: {package} not installed (run `twice bench setup`)"
            continue
        why_not = _cannot_apt()
        if why_not:
            notes[name] = f"skipped: {package} not installed and {why_not}"
            continue
        try:
            if not updated:
                _apt(["apt-get", "update"])
                updated = True
            _apt(["apt-get", "install", "-y", "--no-install-recommends", package])
        except (OSError, subprocess.SubprocessError) as exc:
            notes[name] = f"skipped: apt-get install {package} failed ({exc})"
            continue
        notes[name] = "installed" if folder.is_dir() else f"skipped: {package} installed but {folder} missing"
    for name, note in notes.items():
        LOG.info("source %s: %s", name, note)
    return notes


def _cannot_apt() -> str:
    if shutil.which("apt-get") is None:
        return "this system has no apt-get"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "installing needs root (sudo twice bench setup)"
    return ""


def _apt(argv: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    LOG.info("running %s", " ".join(argv))
    subprocess.run(argv, check=True, env=env, timeout=900, capture_output=True)


# sources -------------------------------------------------------------------------------------


def synthetic_source(count: int, seed: int) -> ImageSource:
    items = [
        Candidate("synthetic", f"synthetic-{i}", lambda i=i: make_synthetic_image(seed, i))
        for i in range(count)
    ]
    return ImageSource("synthetic", items, f"{count} generated (augment.make_synthetic_image, seed {seed})")


def skimage_source() -> ImageSource:
    try:
        import skimage.data
    except ImportError:
        return ImageSource("skimage", note="skipped: scikit-image not installed (pip install -e '.[bench]')")
    items = []
    for name in SKIMAGE_SAMPLES:
        loader = getattr(skimage.data, name, None)
        if loader is not None:
            items.append(Candidate("skimage", name, lambda loader=loader: array_to_image(loader())))
    return ImageSource("skimage", items, f"{len(items)} bundled samples")


def folder_source(name: str, folder: Path) -> ImageSource:
    files = sorted(folder.rglob("*.png"))
    items = [Candidate(name, str(p.relative_to(folder)), lambda p=p: Image.open(p)) for p in files]
    return ImageSource(name, items, f"{len(items)} PNGs under {folder}")


def collect_sources(
    names: Sequence[str], synthetic_count: int, seed: int, install: bool
) -> list[ImageSource]:
    """The requested sources, each with a note; unknown names are a caller mistake."""
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise ValueError(f"unknown image source(s) {unknown}; choose from {', '.join(SOURCE_NAMES)}")
    apt_notes = ensure_apt_sources([n for n in names if n in APT_SOURCES], install)
    sources = []
    for name in names:
        if name == "synthetic":
            sources.append(synthetic_source(synthetic_count, seed))
        elif name == "skimage":
            sources.append(skimage_source())
        elif apt_notes[name].startswith("skipped"):
            sources.append(ImageSource(name, note=apt_notes[name]))
        else:
            sources.append(folder_source(name, APT_SOURCES[name][1]))
    return sources


def array_to_image(array: np.ndarray) -> Image.Image:
    """A scikit-image sample (bool, grey, RGB or RGBA array) as a PIL image."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def flatten_rgb(image: Image.Image) -> Image.Image:
    """RGB on white: clip-art and stamps are mostly transparent."""
    image.load()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def draw_pool(sources: Sequence[ImageSource], total: int, seed: int) -> list[Candidate]:
    """Round-robin over the sources (each shuffled by the seed), then one seeded shuffle of the
    pool, so every role gets a mix of sources; more than ``total`` so failures can be skipped."""
    shuffled = []
    for k, source in enumerate(sources):
        order = np.random.default_rng([seed, k]).permutation(len(source.candidates))
        shuffled.append([source.candidates[i] for i in order])
    pool: list[Candidate] = []
    for i in range(max((len(s) for s in shuffled), default=0)):
        pool += [s[i] for s in shuffled if i < len(s)]
        if len(pool) >= 2 * total + 16:
            break
    head, tail = pool[:total], pool[total:]
    order = np.random.default_rng([seed, 999]).permutation(len(head))
    return [head[i] for i in order] + tail


def drawn_names(draw: Draw = HELD_OUT_DRAW) -> dict[str, set[str]]:
    """Per source, the names ``draw`` takes (without installing anything).

    Folder sources name files relative to their folder; skimage names its samples.
    """
    found = collect_sources(draw.sources, draw.total, draw.seed, install=False)
    pool = draw_pool([s for s in found if s.candidates], draw.total, draw.seed)
    names: dict[str, set[str]] = {}
    for candidate in pool:
        names.setdefault(candidate.source, set()).add(candidate.name)
    return names
