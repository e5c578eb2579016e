"""The benchmark set: photo-like originals indexed among clip-art distractors, never-indexed
clip-art negatives, and an edited copy of every original per edit row as the queries.

Sources: ``synthetic`` (augment's photo-like collection), ``skimage`` (scikit-image's bundled
samples), ``openclipart`` and ``tuxpaint`` (Debian packages ``openclipart-png`` and
``tuxpaint-stamps-default``). Images come from the pool of ``HELD_OUT_DRAW``, the draw that
training leaves out, so the model never saw them. Each edit's parameters are drawn anew for
each original from augment's edit families (``twice.augment.families``), keyed by the seed,
the original's slot and the row's name: a set is reproducible, and a row's draws do not change
when other rows are added.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from twice.augment import TransformSpec, apply_transforms, bound_image, parse_transform, variant_bytes
from twice.augment.families import HELD_OUT_FAMILIES, draw_combo, draw_edit, family_names
from twice.augment.sources import (
    APT_SOURCES,
    HELD_OUT_DRAW,
    SOURCE_NAMES,
    Candidate,
    collect_sources,
    draw_pool,
    drawn_names,
    flatten_rgb,
)

from .metrics import NEGATIVE

LOG = logging.getLogger(__name__)

# The users' protocol: photographs are what people copy; clip art fills the collection and
# makes the hard negatives (different drawings whose hashes sit a few bits apart).
PHOTO_SOURCES = ("synthetic", "skimage")
CLIPART_SOURCES = ("openclipart", "tuxpaint")
COMBO_SIZES = (2, 3)
# Row groups: families training draws, families it never draws, combinations, fixed specs.
SEEN, HELD_OUT, COMBO, FIXED = "seen", "held-out", "combo", "fixed"
# Generator streams: the queries' edits, and calibration's (which must never be a query's).
QUERY_STREAM, CALIBRATION_STREAM = 0, 1
MAX_SIDE = 512  # originals are stored at most this big: the bench measures matching, not decoding
MIN_SIDE = 32  # smaller clip-art is an icon, not a picture anyone copies
# Two drawn images whose grey thumbnails correlate this well under some turn or flip are one
# picture to the eye, so the set must not call them different. Measured on the seed-0 set:
# mirrored Tux Paint stamps 1.00, openclipart's star-polygon rings 0.92-0.998, the closest
# distinct pictures (a moon and a basketball, both discs on white) 0.95.
NEAR_COPY_CORRELATION = 0.98
BLANK_STD = 2.0  # grey levels: a thumbnail flatter than this shows nothing (a faint gradient)
SIGNATURE_SIDE = 32


# edits ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditRow:
    """One row of the results: how each original's copy for it is drawn."""

    name: str
    group: str  # SEEN, HELD_OUT, COMBO or FIXED
    draw: Callable[[np.random.Generator], list[TransformSpec]]


@dataclass(frozen=True)
class Edit:
    """One drawn edit: its row and the specs applied in order (canonical spec strings, so
    ``twice augment --transforms SPEC`` replays each step and ``apply_transforms`` all of them)."""

    row: str
    specs: tuple[TransformSpec, ...]

    @property
    def canonical(self) -> list[str]:
        return [s.canonical for s in self.specs]

    def apply(self, image: Image.Image) -> Image.Image:
        return apply_transforms(image, self.specs)

    def encode(self, image: Image.Image) -> tuple[bytes, str]:
        """The copy's file bytes and suffix: as augment stores a variant (a JPEG for a last
        ``jpeg`` step, lossless PNG otherwise)."""
        *head, last = self.specs
        suffix = "jpg" if last.name == "jpeg" else "png"
        return variant_bytes(apply_transforms(image, head), last), suffix


def edit_rows(
    families: Sequence[str] | None = None,
    combos: Sequence[int] = COMBO_SIZES,
    transforms: Sequence[str] = (),
) -> list[EditRow]:
    """Rows for ``families`` (default: every family; held-out ones in their own group), one
    combination row per size in ``combos`` (drawn from the seen families among them), and one
    row per fixed transform spec."""
    names = family_names(families) if families is None or len(families) else ()
    rows = [
        EditRow(name, HELD_OUT if name in HELD_OUT_FAMILIES else SEEN, lambda rng, n=name: draw_edit(n, rng))
        for name in names
    ]
    seen = tuple(name for name in names if name not in HELD_OUT_FAMILIES)
    for k in combos:
        if not 2 <= k <= len(seen):
            raise ValueError(f"a combination takes 2..{len(seen)} of the seen families {seen}, not {k!r}")
        rows.append(EditRow(f"combo of {k}", COMBO, lambda rng, k=k: draw_combo(rng, seen, k)))
    for text in dict.fromkeys(transforms):
        spec = parse_transform(text)
        rows.append(EditRow(spec.canonical, FIXED, lambda rng, s=spec: [s]))
    if not rows:
        raise ValueError("no edits to measure: give families, combination sizes or transforms")
    if len({row.name for row in rows}) < len(rows):
        raise ValueError(f"edit rows need distinct names: {[row.name for row in rows]}")
    return rows


def row_rng(row: EditRow, seed: int, slot: int, stream: int = QUERY_STREAM) -> np.random.Generator:
    """The generator of ``row``'s draw for the original in ``slot``: from the seed, the stream,
    the slot and the row's name, so adding a row changes no other row's draws."""
    return np.random.default_rng([seed, stream, slot, zlib.crc32(row.name.encode())])


def draw_edits(rows: Sequence[EditRow], seed: int, slot: int) -> list[Edit]:
    """The edits of the original in ``slot``, one per row."""
    return [Edit(row.name, tuple(row.draw(row_rng(row, seed, slot)))) for row in rows]


# the set -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    path: Path
    original: Path | None  # None for a negative: nothing in the index should match it
    edit: str  # the row's name, or NEGATIVE
    specs: tuple[str, ...] = ()  # canonical specs, applied in order

    def record(self) -> dict:
        """What the results keep of it: enough to remake the copy."""
        return {
            "query": self.path.name,
            "original": self.original.name if self.original else None,
            "edit": self.edit,
            "specs": list(self.specs),
        }


@dataclass
class BenchSet:
    """Files on disk: indexed = originals + distractors; queries = edited copies + negatives."""

    folder: Path
    originals: list[Path]
    distractors: list[Path]
    negatives: list[Path]
    queries: list[Query]
    rows: list[EditRow]
    sources: dict[str, str]  # source name -> note
    source_of: dict[str, str]  # file name -> source name
    left_out: dict[str, int] = field(default_factory=dict)  # why drawn images were not used
    drawn_as: dict[str, str] = field(default_factory=dict)  # file name -> the source's name for it

    @property
    def indexed(self) -> list[Path]:
        return self.originals + self.distractors

    @property
    def groups(self) -> dict[str, str]:
        """row name -> its group."""
        return {row.name: row.group for row in self.rows}

    def counts(self) -> dict:
        by_role = {"originals": self.originals, "distractors": self.distractors, "negatives": self.negatives}
        return {
            role: {
                "total": len(paths),
                **{s: sum(self.source_of[p.name] == s for p in paths) for s in self.sources},
            }
            for role, paths in by_role.items()
        } | {"queries": len(self.queries)}

    def seen_in_training(self) -> list[str]:
        """Files of the set outside the draw training leaves out (``HELD_OUT_DRAW``): the model
        may have learned them. Generated images are always unseen (training generates its own
        from seeds 1000 and up)."""
        held_out = drawn_names(HELD_OUT_DRAW)
        return sorted(
            name
            for name, drawn in self.drawn_as.items()
            if self.source_of[name] != "synthetic" and drawn not in held_out.get(self.source_of[name], ())
        )


def build_bench_set(
    folder: str | Path,
    originals: int,
    distractors: int,
    negatives: int,
    seed: int = HELD_OUT_DRAW.seed,
    original_sources: Sequence[str] = PHOTO_SOURCES,
    distractor_sources: Sequence[str] = CLIPART_SOURCES,
    rows: Sequence[EditRow] | None = None,
    install: bool = True,
) -> BenchSet:
    """Write the set under ``folder`` (originals/, distractors/, negatives/, queries/).

    Originals come from ``original_sources``, distractors and then negatives from
    ``distractor_sources``, all from one seeded pool of ``HELD_OUT_DRAW.total`` (the pool
    training leaves out when ``seed`` is its seed)."""
    for name, n in (("originals", originals), ("distractors", distractors), ("negatives", negatives)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a count >= 0, got {n!r}")
    if originals < 1:
        raise ValueError(f"originals must be at least 1, got {originals}")
    rows = list(edit_rows() if rows is None else rows)
    folder = Path(folder).resolve()  # answers name files by absolute path
    wanted = set(original_sources) | set(distractor_sources)
    names = [n for n in SOURCE_NAMES if n in wanted] + sorted(wanted - set(SOURCE_NAMES))
    found = collect_sources(names, HELD_OUT_DRAW.total, seed, install)  # raises naming unknown ones
    pool = draw_pool([s for s in found if s.candidates], HELD_OUT_DRAW.total, seed)
    roles = [
        Role("originals", originals, tuple(original_sources)),
        Role("distractors", distractors, tuple(distractor_sources)),
        Role("negatives", negatives, tuple(distractor_sources)),
    ]
    chosen, left_out = write_images(folder, pool, roles, lambda slot: draw_edits(rows, seed, slot))
    if len(chosen["originals"]) < originals:
        raise RuntimeError(
            f"the sources {', '.join(original_sources)} gave only {len(chosen['originals'])} usable"
            f" originals, {originals} asked"
        )
    queries = write_queries(folder / "queries", chosen["originals"], rows, seed)
    queries += [Query(p, None, NEGATIVE) for p, _ in chosen["negatives"]]
    bench_set = BenchSet(
        folder,
        [p for p, _ in chosen["originals"]],
        [p for p, _ in chosen["distractors"]],
        [p for p, _ in chosen["negatives"]],
        queries,
        rows,
        {s.name: s.note for s in found},
        {p.name: c.source for role in chosen.values() for p, c in role},
        dict(left_out),
        {p.name: c.name for role in chosen.values() for p, c in role},
    )
    manifest = {
        "seed": seed,
        "counts": bench_set.counts(),
        "left_out": bench_set.left_out,
        "queries": [q.record() for q in queries],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    LOG.info("bench set in %s: %s; left out of the draw: %s", folder, bench_set.counts(), bench_set.left_out)
    return bench_set


@dataclass(frozen=True)
class Role:
    """How many images a role takes, and from which sources."""

    name: str
    wanted: int
    sources: tuple[str, ...]


def write_images(
    folder: Path,
    pool: list[Candidate],
    roles: Sequence[Role],
    edits_for: Callable[[int], Sequence[Edit]] | None = None,
) -> tuple[dict[str, list[tuple[Path, Candidate]]], Counter]:
    """Fill each role in order from the pool (each candidate used once), skipping what
    ``PoolFilter`` leaves out; an original in slot i is checked with ``edits_for(i)``, the
    copies it will get."""
    chosen: dict[str, list[tuple[Path, Candidate]]] = {role.name: [] for role in roles}
    pool_filter = PoolFilter()
    taken: set[int] = set()
    for role in roles:
        (folder / role.name).mkdir(parents=True, exist_ok=True)
        picks = chosen[role.name]
        for i, candidate in enumerate(pool):
            if len(picks) >= role.wanted:
                break
            if i in taken or candidate.source not in role.sources:
                continue
            taken.add(i)
            image = prepare(candidate)
            copies = edits_for(len(picks)) if edits_for is not None and role.name == "originals" else ()
            if image is None or not pool_filter.admit(candidate, image, copies):
                continue
            picks.append((save_prepared(folder / role.name, len(picks), candidate, image), candidate))
        if len(picks) < role.wanted:
            LOG.warning(
                "sources %s ran out: %s has %d of %d",
                ",".join(role.sources),
                role.name,
                len(picks),
                role.wanted,
            )
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

    def admit(self, candidate: Candidate, image: Image.Image, copies: Sequence[Edit] = ()) -> bool:
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


def blanked_by(image: Image.Image, edits: Sequence[Edit]) -> str | None:
    """The first edit whose copy of ``image`` has no structure left (bright +100 turns pale
    clip art pure white): such a copy matches every blank image alike, so no method can find its
    original and the query would measure nothing."""
    for edit in edits:
        if dihedral_signatures(edit.apply(image)) is None:
            return ",".join(edit.canonical)
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


def write_queries(
    folder: Path, originals: list[tuple[Path, Candidate]], rows: Sequence[EditRow], seed: int
) -> list[Query]:
    """Each original's drawn edit per row, as the bytes augment would store for it."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = []
    for slot, (path, _candidate) in enumerate(originals):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        for edit in draw_edits(rows, seed, slot):
            data, suffix = edit.encode(image)
            target = folder / f"{path.stem}__{re.sub(r'[^a-z0-9]+', '-', edit.row.lower())}.{suffix}"
            target.write_bytes(data)
            queries.append(Query(target, path, edit.row, tuple(edit.canonical)))
    return queries
