"""The benchmark set: images from several sources, split into originals, distractors and
never-indexed negatives, plus the transformed copies of every original that serve as queries.

Sources: ``synthetic`` (augment's photo-like collection), ``skimage`` (scikit-image's bundled
samples), ``openclipart`` and ``tuxpaint`` (Debian packages ``openclipart-png`` and
``tuxpaint-stamps-default``). Every choice is drawn from one seed, so a set is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from augment import (
    ORIGINAL_FOUR,
    TransformSpec,
    bound_image,
    make_synthetic_image,
    parse_transforms,
    variant_bytes,
)

LOG = logging.getLogger(__name__)

# The original system's four, then the harder edits the issue names.
DEFAULT_TRANSFORMS = (*ORIGINAL_FOUR, "crop", "tilt", "jpeg", "scale", "blur", "gray", "overlay")
DEFAULT_SOURCES = ("synthetic", "skimage", "openclipart", "tuxpaint")
MAX_SIDE = 512  # originals are stored at most this big: the bench measures matching, not decoding
MIN_SIDE = 32  # smaller clip-art is an icon, not a picture anyone copies
# Two drawn images whose grey thumbnails correlate this well under some turn or flip are one
# picture to the eye, so the set must not call them different. Measured on the seed-0 set:
# mirrored Tux Paint stamps 1.00, openclipart's star-polygon rings 0.92-0.998, the closest
# distinct pictures (a moon and a basketball, both discs on white) 0.95.
NEAR_COPY_CORRELATION = 0.98
BLANK_STD = 2.0  # grey levels: a thumbnail flatter than this shows nothing (a faint gradient)
SIGNATURE_SIDE = 32

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
class Candidate:
    """One image a source can give, loaded only when chosen."""

    source: str
    name: str
    load: Callable[[], Image.Image]


@dataclass
class BenchSource:
    """A named source's candidates and a note on what it gave or why it gave nothing."""

    name: str
    candidates: list[Candidate] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Query:
    path: Path
    original: Path | None  # None for a negative: nothing in the index should match it
    transform: str  # canonical spec, or "negative"


@dataclass
class BenchSet:
    """Files on disk: indexed = originals + distractors; queries = transformed copies + negatives."""

    folder: Path
    originals: list[Path]
    distractors: list[Path]
    negatives: list[Path]
    queries: list[Query]
    transforms: list[str]
    sources: dict[str, str]  # source name -> note
    source_of: dict[str, str]  # file name -> source name
    left_out: dict[str, int] = field(default_factory=dict)  # why drawn images were not used

    @property
    def indexed(self) -> list[Path]:
        return self.originals + self.distractors

    def counts(self) -> dict:
        by_role = {"originals": self.originals, "distractors": self.distractors, "negatives": self.negatives}
        return {
            role: {
                "total": len(paths),
                **{s: sum(self.source_of[p.name] == s for p in paths) for s in self.sources},
            }
            for role, paths in by_role.items()
        } | {"queries": len(self.queries)}


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


def synthetic_source(count: int, seed: int) -> BenchSource:
    items = [
        Candidate("synthetic", f"synthetic-{i}", lambda i=i: make_synthetic_image(seed, i))
        for i in range(count)
    ]
    return BenchSource("synthetic", items, f"{count} generated (augment.make_synthetic_image, seed {seed})")


def skimage_source() -> BenchSource:
    try:
        import skimage.data
    except ImportError:
        return BenchSource("skimage", note="skipped: scikit-image not installed (pip install -e '.[bench]')")
    items = []
    for name in SKIMAGE_SAMPLES:
        loader = getattr(skimage.data, name, None)
        if loader is not None:
            items.append(Candidate("skimage", name, lambda loader=loader: array_to_image(loader())))
    return BenchSource("skimage", items, f"{len(items)} bundled samples")


def folder_source(name: str, folder: Path) -> BenchSource:
    files = sorted(folder.rglob("*.png"))
    items = [Candidate(name, str(p.relative_to(folder)), lambda p=p: Image.open(p)) for p in files]
    return BenchSource(name, items, f"{len(items)} PNGs under {folder}")


def collect_sources(
    names: Sequence[str], synthetic_count: int, seed: int, install: bool
) -> list[BenchSource]:
    """The requested sources, each with a note; unknown names are a caller mistake."""
    unknown = [n for n in names if n not in DEFAULT_SOURCES]
    if unknown:
        raise ValueError(f"unknown bench source(s) {unknown}; choose from {', '.join(DEFAULT_SOURCES)}")
    apt_notes = ensure_apt_sources([n for n in names if n in APT_SOURCES], install)
    sources = []
    for name in names:
        if name == "synthetic":
            sources.append(synthetic_source(synthetic_count, seed))
        elif name == "skimage":
            sources.append(skimage_source())
        elif apt_notes[name].startswith("skipped"):
            sources.append(BenchSource(name, note=apt_notes[name]))
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


# the split ----------------------------------------------------------------------------------


def draw_pool(sources: Sequence[BenchSource], total: int, seed: int) -> list[Candidate]:
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


def build_bench_set(
    folder: str | Path,
    originals: int,
    distractors: int,
    negatives: int,
    seed: int = 0,
    sources: Sequence[str] = DEFAULT_SOURCES,
    transforms: Sequence[str] = DEFAULT_TRANSFORMS,
    install: bool = True,
) -> BenchSet:
    """Write the set under ``folder`` (originals/, distractors/, negatives/, queries/)."""
    for name, n in (("originals", originals), ("distractors", distractors), ("negatives", negatives)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a count >= 0, got {n!r}")
    if originals < 1:
        raise ValueError(f"originals must be at least 1, got {originals}")
    specs = parse_transforms(list(transforms))
    folder = Path(folder).resolve()  # answers name files by absolute path
    total = originals + distractors + negatives
    found = collect_sources(sources, total, seed, install)
    pool = draw_pool([s for s in found if s.candidates], total, seed)
    chosen, left_out = write_images(
        folder,
        pool,
        [("originals", originals), ("distractors", distractors), ("negatives", negatives)],
        specs,
    )
    if len(chosen["originals"]) < originals:
        raise RuntimeError(
            f"the sources gave only {len(chosen['originals'])} usable originals, {originals} asked"
        )
    queries = write_queries(folder / "queries", chosen["originals"], specs)
    queries += [Query(p, None, "negative") for p, _ in chosen["negatives"]]
    bench_set = BenchSet(
        folder,
        [p for p, _ in chosen["originals"]],
        [p for p, _ in chosen["distractors"]],
        [p for p, _ in chosen["negatives"]],
        queries,
        [s.canonical for s in specs],
        {s.name: s.note for s in found},
        {p.name: src for role in chosen.values() for p, src in role},
        dict(left_out),
    )
    manifest = {"seed": seed, "counts": bench_set.counts(), "left_out": bench_set.left_out}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    LOG.info("bench set in %s: %s; left out of the draw: %s", folder, bench_set.counts(), bench_set.left_out)
    return bench_set


def write_images(
    folder: Path, pool: list[Candidate], roles: list[tuple[str, int]], specs: Sequence[TransformSpec] = ()
) -> tuple[dict[str, list[tuple[Path, str]]], Counter]:
    """Fill each role in order from the pool, skipping what ``PoolFilter`` leaves out (originals
    are checked with the copies ``specs`` will make of them)."""
    chosen: dict[str, list[tuple[Path, str]]] = {role: [] for role, _ in roles}
    pool_filter = PoolFilter()
    items = iter(pool)
    for role, wanted in roles:
        (folder / role).mkdir(parents=True, exist_ok=True)
        while len(chosen[role]) < wanted:
            candidate = next(items, None)
            if candidate is None:
                LOG.warning("sources ran out: %s has %d of %d", role, len(chosen[role]), wanted)
                break
            image = prepare(candidate)
            copies = specs if role == "originals" else ()
            if image is None or not pool_filter.admit(candidate, image, copies):
                continue
            path = save_prepared(folder / role, len(chosen[role]), candidate, image)
            chosen[role].append((path, candidate.source))
    return chosen, pool_filter.left_out


class PoolFilter:
    """Keeps out of the set every drawn image that would make its ground truth wrong.

    The set calls every pair of its images different, so it must not hold two that are the same
    picture: a repeat (same pixels), a near-copy (same picture under a turn or flip, as Tux Paint's
    mirrored stamps are), a second member of a numbered series (openclipart's 1,378
    ``shapes/stars/star_NNptMMstep`` polygons render as nearly the same ring), or a blank (a
    gradient that flattens to white, which every bright copy then matches). Nor may an original
    have a copy without a picture (``blanked_by``). None of these tests looks at a model, so no
    method is favoured.
    """

    def __init__(self) -> None:
        self.pixels: set[str] = set()
        self.series: set[tuple[str, str]] = set()
        self.signatures: list[np.ndarray] = []  # each admitted image's thumbnail as it stands
        self.left_out: Counter = Counter()

    def admit(self, candidate: Candidate, image: Image.Image, copies: Sequence[TransformSpec] = ()) -> bool:
        """Whether ``image`` joins the set (as an original when it gets ``copies``); what joins is
        remembered, what not is counted."""
        if blanked_by(image, copies):
            self.left_out["blank copy"] += 1
            return False
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        series = series_key(candidate)
        views = dihedral_signatures(image)
        reason = self.reason_to_leave_out(digest, series, views)
        if reason:
            self.left_out[reason] += 1
            return False
        self.pixels.add(digest)
        if series is not None:
            self.series.add(series)
        self.signatures.append(views[0])
        return True

    def reason_to_leave_out(
        self, digest: str, series: tuple[str, str] | None, views: np.ndarray | None
    ) -> str | None:
        if digest in self.pixels:
            return "repeat"
        if series is not None and series in self.series:
            return "series"
        if views is None:
            return "blank"
        if self.signatures and float(np.max(np.stack(self.signatures) @ views.T)) >= NEAR_COPY_CORRELATION:
            return "near-copy"
        return None


def blanked_by(image: Image.Image, specs: Sequence[TransformSpec]) -> str | None:
    """The first transform whose copy of ``image`` has no structure left (bright +100 turns pale
    clip art pure white): such a copy matches every blank image alike, so no method can find its
    original and the query would measure nothing."""
    for spec in specs:
        if dihedral_signatures(spec.apply(image)) is None:
            return spec.canonical
    return None


def series_key(candidate: Candidate) -> tuple[str, str] | None:
    """Files of one folder whose names differ only in their numbers are one drawing's series."""
    if candidate.source not in APT_SOURCES:
        return None
    path = Path(candidate.name)
    return str(path.parent), re.sub(r"\d+", "#", path.stem)


def dihedral_signatures(image: Image.Image) -> np.ndarray | None:
    """The grey thumbnail in its 8 turns and flips, each zero-mean and unit-length; None if blank."""
    grey = image.convert("L").resize((2 * SIGNATURE_SIDE,) * 2, Image.Resampling.BOX)
    small = grey.resize((SIGNATURE_SIDE,) * 2, Image.Resampling.BOX)  # two box steps: a soft blur
    pixels = np.asarray(small, np.float32)
    if pixels.std() < BLANK_STD:
        return None
    views = []
    for turns in range(4):
        turned = np.rot90(pixels, turns)
        views += [turned, turned[:, ::-1]]
    flat = np.stack(views).reshape(8, -1)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def prepare(candidate: Candidate) -> Image.Image | None:
    try:
        image = flatten_rgb(candidate.load())
    except (OSError, ValueError) as exc:
        LOG.warning("skipped %s %s: %s", candidate.source, candidate.name, exc)
        return None
    if min(image.size) < MIN_SIDE:
        return None
    return bound_image(image, MAX_SIDE)[0]


def save_prepared(folder: Path, index: int, candidate: Candidate, image: Image.Image) -> Path:
    # Photos as JPEG like the web serves them; drawings as PNG (JPEG would smear their edges).
    photo = candidate.source in ("synthetic", "skimage")
    path = folder / f"{candidate.source}-{index:05d}.{'jpg' if photo else 'png'}"
    if photo:
        image.save(path, format="JPEG", quality=92)
    else:
        image.save(path, format="PNG", compress_level=1)
    return path


def write_queries(folder: Path, originals: list[tuple[Path, str]], specs: list[TransformSpec]) -> list[Query]:
    """Every transform of every original, as the bytes augment would store for it."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = []
    for path, _source in originals:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        for spec in specs:
            suffix = "jpg" if spec.name == "jpeg" else "png"
            target = folder / f"{path.stem}__{spec.canonical.replace(':', '_')}.{suffix}"
            target.write_bytes(variant_bytes(image, spec))
            queries.append(Query(target, path, spec.canonical))
    return queries
