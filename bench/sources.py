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
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from twice.augment import (
    ORIGINAL_FOUR,
    TransformSpec,
    bound_image,
    parse_transforms,
    variant_bytes,
)
from twice.augment.sources import (
    APT_SOURCES,
    SOURCE_NAMES,
    Candidate,
    collect_sources,
    draw_pool,
    flatten_rgb,
)

LOG = logging.getLogger(__name__)

# The original system's four, then the harder edits the issue names.
DEFAULT_TRANSFORMS = (*ORIGINAL_FOUR, "crop", "tilt", "jpeg", "scale", "blur", "gray", "overlay")
MAX_SIDE = 512  # originals are stored at most this big: the bench measures matching, not decoding
MIN_SIDE = 32  # smaller clip-art is an icon, not a picture anyone copies
# Two drawn images whose grey thumbnails correlate this well under some turn or flip are one
# picture to the eye, so the set must not call them different. Measured on the seed-0 set:
# mirrored Tux Paint stamps 1.00, openclipart's star-polygon rings 0.92-0.998, the closest
# distinct pictures (a moon and a basketball, both discs on white) 0.95.
NEAR_COPY_CORRELATION = 0.98
BLANK_STD = 2.0  # grey levels: a thumbnail flatter than this shows nothing (a faint gradient)
SIGNATURE_SIDE = 32


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


# the split ----------------------------------------------------------------------------------


def build_bench_set(
    folder: str | Path,
    originals: int,
    distractors: int,
    negatives: int,
    seed: int = 0,
    sources: Sequence[str] = SOURCE_NAMES,
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
