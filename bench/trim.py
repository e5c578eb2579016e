"""What border trimming does to recall: letterboxed, pillarboxed, framed and tilted copies.

Run from a checkout: ``python -m bench.trim [--originals N] [--distractors M] [--seed S]``.
The images are the quality bench's held-out draw (``HELD_OUT_DRAW``: synthetic scenes,
scikit-image samples, openclipart, Tux Paint stamps; ``twice bench setup`` installs the last
two). Every copy's parameters (bar and border widths, border colour, tilt angle and fill) are
drawn from ranges with the seed. Each method describes the indexed images (originals, then
distractors) and the copies the same way and ranks by cosine (CNN) or dihedral Hamming distance
(pHash); recall@1 with a 95% Wilson interval, pHash "within" is the share of copies within the
default similar radius of their original.

Methods: the shipped model with and without ``trim_borders``, and with ``fill_corners`` too
(the runs of the corners' colour from the sides filled with the content's mean colour, on the
squashed image: the corner fill for tilted copies); the pHash the same three ways.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from twice.augment.sources import HELD_OUT_DRAW, collect_sources, draw_pool
from twice.borders import fill_corners, trim_borders
from twice.hashing import dct_coefficients, dihedral_coefficients, hamming, hash_coefficients
from twice.model import Embedder
from twice.model.embedder import Preprocess
from twice.options import Options
from twice.search.verdicts import DEFAULT_HASH_SIMILAR

from .machine import machine_facts
from .results import command_line, markdown_table, write_results
from .sources import prepare

LOG = logging.getLogger(__name__)

COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}


def fill_of(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    if name == "colour":
        return tuple(int(c) for c in rng.integers(0, 256, 3))
    if name == "any":
        return fill_of(rng, str(rng.choice([*COLOURS, "colour"])))
    return COLOURS[name]


def letterbox(image, rng, fill="black"):
    bar = round(image.height * rng.uniform(0.08, 0.25))
    return ImageOps.expand(image, (0, bar, 0, bar), fill_of(rng, fill))


def pillarbox(image, rng, fill="black"):
    bar = round(image.width * rng.uniform(0.08, 0.25))
    return ImageOps.expand(image, (bar, 0, bar, 0), fill_of(rng, fill))


def border(image, rng, fill="any"):
    sides = [round(s * rng.uniform(0.02, 0.12)) for s in (image.width, image.height) * 2]
    return ImageOps.expand(image, tuple(sides), fill_of(rng, fill))


def jpeg(image, quality):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def tilt(image, rng, fill="black", expand=False):
    """Pillow's rotate as people call it: same size (corners cut) unless ``expand``."""
    degrees = rng.uniform(5, 15) * rng.choice([-1, 1])
    return image.rotate(degrees, Image.Resampling.BICUBIC, expand=expand, fillcolor=fill_of(rng, fill))


EDITS: dict[str, Callable] = {
    "letterbox black": letterbox,
    "letterbox black, JPEG q75": lambda im, rng: jpeg(letterbox(im, rng), 75),
    "letterbox any colour": lambda im, rng: letterbox(im, rng, "any"),
    "pillarbox black": pillarbox,
    "border any colour, 2-12% per side": border,
    "border white": lambda im, rng: border(im, rng, "white"),
    "tilt 5-15°, black corners": tilt,
    "tilt 5-15°, white corners": lambda im, rng: tilt(im, rng, "white"),
    "tilt 5-15°, colour corners": lambda im, rng: tilt(im, rng, "colour"),
    "tilt 5-15° expanded, black corners": lambda im, rng: tilt(im, rng, "black", expand=True),
    # controls: edits without borders, which trimming must not hurt
    "mirror": lambda im, rng: ImageOps.mirror(im),
    "bright +100": lambda im, rng: Image.eval(im, lambda v: min(255, v + 100)),
    "dark -50": lambda im, rng: Image.eval(im, lambda v: max(0, v - 50)),
    "JPEG q50": lambda im, rng: jpeg(im, 50),
}


def untrimmed_hashes(image: Image.Image) -> np.ndarray:
    return hash_coefficients(dihedral_coefficients(dct_coefficients(image)))


def trimmed_hashes(image: Image.Image) -> np.ndarray:
    return untrimmed_hashes(trim_borders(image))


def filled_hashes(image: Image.Image) -> np.ndarray:
    return untrimmed_hashes(fill_corners(trim_borders(image)))


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def load_images(originals: int, distractors: int, seed: int) -> list[Image.Image]:
    total = originals + distractors
    found = collect_sources(HELD_OUT_DRAW.sources, total, seed, install=False)
    for source in found:
        LOG.info("source %s: %d candidates %s", source.name, len(source.candidates), source.note)
    images = []
    for candidate in draw_pool([s for s in found if s.candidates], total, seed):
        image = prepare(candidate)
        if image is not None:
            images.append(image)
        if len(images) == total:
            return images
    raise RuntimeError(f"the sources gave {len(images)} usable images, {total} asked")


def cnn_method(embedder: Embedder, trim: bool, fill: bool) -> Callable:
    preprocess = Preprocess(embedder.image_size, trim=trim, fill=fill)

    def describe(images: list[Image.Image]) -> np.ndarray:
        tensors = [preprocess(im) for im in images]
        return np.concatenate(
            [embedder.embed_tensors(tensors[i : i + 64]) for i in range(0, len(tensors), 64)]
        )

    return describe


def cnn_rank1(xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (xq @ xb.T).argmax(axis=1) == truth


def hash_outcomes(
    stored: np.ndarray, queries: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rank-1 hits with ties lost, within the similar radius) per query."""
    distances = np.stack([hamming(q[:, None], stored[None, :]).min(axis=0) for q in queries])
    own = distances[np.arange(len(truth)), truth]
    others = distances.copy()
    others[np.arange(len(truth)), truth] = 99
    return own < others.min(axis=1), own <= DEFAULT_HASH_SIMILAR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trim", description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=100)
    parser.add_argument("--distractors", type=int, default=300)
    parser.add_argument("--seed", type=int, default=HELD_OUT_DRAW.seed)
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    images = load_images(args.originals, args.distractors, args.seed)
    originals = images[: args.originals]
    truth = np.arange(len(originals))
    copies = {
        name: [edit(im, np.random.default_rng([args.seed, e, i])) for i, im in enumerate(originals)]
        for e, (name, edit) in enumerate(EDITS.items())
    }
    embedder = Embedder.from_options(Options())
    methods = {
        "CNN": cnn_method(embedder, trim=False, fill=False),
        "CNN + trim": cnn_method(embedder, trim=True, fill=False),
        "CNN + trim + corner fill": cnn_method(embedder, trim=True, fill=True),
    }
    rows, figures = [], {}
    recall: dict[str, dict[str, list]] = {name: {} for name in EDITS}
    for method, describe in methods.items():
        xb = describe(images)
        for name, queries in copies.items():
            hits = cnn_rank1(xb, describe(queries), truth)
            recall[name][method] = [int(hits.sum()), len(hits)]
        LOG.info("%s done (%.0f s)", method, time.perf_counter() - started)
    hashers = (
        ("pHash", untrimmed_hashes),
        ("pHash + trim", trimmed_hashes),
        ("pHash + trim + fill", filled_hashes),
    )
    for method, hashes in hashers:
        stored = np.array([hashes(im)[0] for im in images])
        for name, queries in copies.items():
            first, within = hash_outcomes(stored, np.stack([hashes(q) for q in queries]), truth)
            recall[name][method] = [int(first.sum()), len(first)]
            recall[name][f"{method} within {DEFAULT_HASH_SIMILAR}"] = [int(within.sum()), len(within)]
    columns = list(next(iter(recall.values())))
    for name, by_method in recall.items():
        rows.append([name, *(cell(*by_method[m]) for m in columns)])
    figures = {"recall_at_1": recall}
    seconds = time.perf_counter() - started
    payload = {
        "kind": "trim",
        "command": command_line(["python", "-m", "bench.trim", *(argv or [])]),
        "machine": machine_facts(),
        "model": embedder.version,
        "originals": len(originals),
        "indexed": len(images),
        "seconds": round(seconds, 1),
        **figures,
    }
    table = markdown_table(["copy", *columns], rows)
    markdown = (
        f"# Border trimming: recall@1 (95% CI)\n\n{len(originals)} originals among {len(images)} indexed, "
        f"seed {args.seed}, model `{embedder.version}`, {seconds:.0f} s\n\n{table}\n"
    )
    write_results("trim", payload, markdown, args.results_dir)
    print(markdown)
    return 0


def cell(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits / n:.2f} ({low:.2f}-{high:.2f})"


if __name__ == "__main__":
    raise SystemExit(main())
