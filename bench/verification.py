"""Geometric verification, pair by pair: inliers of true copies against wrong pairs, and the cost.

    python -m bench.verification [--wrong-pairs 2000] [--detectors sift,orb] [--fits] [--results-dir DIR]

True copies: skimage samples and synthetic photos (``augment.make_synthetic_image``), each edited
by every family in ``EDITS`` with parameters drawn from the family's ranges. Wrong pairs: clip
art against clip art (/usr/share/openclipart/png), the pairs whose perceptual hashes are nearest
(different drawings that look alike: the hard case). For each detector: how many wrong pairs
reach >= N inliers and the share of copies that do, per edit, with the time to extract and to
verify. ``--fits``: the same for each transform on its own (similarity, affine, homography, every
fit tried on every pair), and for ``verify`` as it decides (the fallback fits only where the
similarity does not verify).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from twice.augment.families import FAMILIES, draw_combo, draw_edit
from twice.augment.sources import APT_SOURCES, Candidate, flatten_rgb, skimage_source
from twice.augment.synthetic import make_synthetic_image
from twice.augment.transforms import apply_transforms
from twice.hashing import hamming, phash
from twice.search.verify import FITS, VERIFIED_INLIERS, FeatureExtractor, inliers_by_fit, verify

from .machine import machine_facts
from .results import markdown_table
from .sources import MAX_SIDE, NEAR_COPY_CORRELATION, dihedral_signatures, series_key

LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (4, 6, 8, 12, 16, 24, 32)


# The copies: edit families drawn from their ranges (augment.families), the held-out ones too,
# combinations of two or three, and the edits that are no similarity (a stretch, alone or with a
# tilt or a crop: "a+b" is both, in the families' stage order).
EDITS = (
    "tilt",
    "border",
    "crop",
    "caption",
    "screenshot",
    "perspective",
    "sticker",
    "combo",
    "stretch",
    "stretch+tilt",
    "stretch+crop",
)


def edited_copy(image: Image.Image, edit: str, rng: np.random.Generator) -> Image.Image:
    if edit == "combo":
        specs = draw_combo(rng)
    else:
        families = sorted(edit.split("+"), key=lambda name: FAMILIES[name].stage)
        specs = [s for name in families for s in draw_edit(name, rng)]
    return apply_transforms(image, specs)


def originals(count: int) -> list[Image.Image]:
    photos = [c.load().convert("RGB") for c in skimage_source().candidates]
    photos += [make_synthetic_image(26, i, (480, 360)) for i in range(max(0, count - len(photos)))]
    return photos[:count]


def clip_art(count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """``count`` different drawings: one per series of numbered files, no blank or near copies
    (the bench set's own rules, ``bench.sources``)."""
    folder = APT_SOURCES["openclipart"][1]
    files = sorted(folder.rglob("*.png"))
    if not files:
        raise SystemExit("no clip art: apt-get install -y openclipart-png")
    images, names, series, signatures = [], [], set(), []
    for i in np.random.default_rng(seed).permutation(len(files)):
        key = series_key(Candidate("openclipart", str(files[i].relative_to(folder)), lambda: None))
        with Image.open(files[i]) as opened:
            if opened.width * opened.height > 40_000_000:
                continue  # a decompression bomb by twice's own limits
            image = flatten_rgb(opened)
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # as the bench set stores them
        views = dihedral_signatures(image)
        if key in series or min(image.size) < 64 or views is None:
            continue
        if signatures and float(np.max(np.stack(signatures) @ views.T)) >= NEAR_COPY_CORRELATION:
            continue
        series.add(key)
        signatures.append(views[0])
        images.append(image)
        names.append(str(files[i].relative_to(folder)))
        if len(images) == count:
            break
    return images, names


def nearest_pairs(images: list[Image.Image], count: int) -> list[tuple[int, int, int]]:
    """The ``count`` pairs of different images whose hashes are nearest: (i, j, bits)."""
    hashes = np.array([phash(im) for im in images], np.int64)
    pairs = [
        (i, j, int(hamming(hashes[i], hashes[j]))) for i, j in itertools.combinations(range(len(images)), 2)
    ]
    return sorted(pairs, key=lambda p: p[2])[:count]


def same_set(a: str, b: str) -> bool:
    """Two drawings of one folder family (``recreation/games/...``, ``shapes/jigsaw``)."""
    return Path(a).parts[:2] == Path(b).parts[:2]


def measure(detector: str, photos, edited, clips, pairs, names, fits: bool = False) -> dict:
    extract = FeatureExtractor(detector)
    started = time.perf_counter()
    stored = [extract(im) for im in photos]
    clip_features = [extract.both(im) for im in clips]  # each may be the query: with its mirror
    extract_ms = (time.perf_counter() - started) * 1000 / (len(photos) + 2 * len(clips))
    true: dict[str, list[int]] = {}
    true_fits: dict[str, list[dict]] = {}
    verify_ms = []
    for name, queries in edited.items():
        for k, query in enumerate(queries):
            plain, mirrored = extract.both(query)
            started = time.perf_counter()
            result = verify(plain, stored[k], mirrored)
            verify_ms.append((time.perf_counter() - started) * 1000)
            true.setdefault(name, []).append(result.evidence or 0)
            if fits:
                true_fits.setdefault(name, []).append(fit_record(result, plain, stored[k], mirrored))
    wrong, wrong_fits = [], []
    wrong_ms = {True: [], False: []}  # with and without the fallback fits, pair by pair
    for i, j, _ in pairs:
        plain, mirrored = clip_features[i]
        for fallback in (False, True):
            started = time.perf_counter()
            result = verify(plain, clip_features[j][0], mirrored, fallback)
            wrong_ms[fallback].append((time.perf_counter() - started) * 1000)
        wrong.append(result.evidence or 0)
        if fits:
            wrong_fits.append(fit_record(result, plain, clip_features[j][0], mirrored))
    wrong = np.array(wrong)
    every_copy = [t for v in true.values() for t in v]
    run = {
        "detector": detector,
        "extract_ms": round(extract_ms, 1),
        "verify_ms_p50": round(float(np.median(verify_ms)), 1),
        "verify_ms_p90": round(float(np.percentile(verify_ms, 90)), 1),
        # wrong pairs (most fail the similarity fit): the fallback fits' cost, measured in turns
        "wrong_verify_ms": {
            ("with" if on else "without") + "_fallback": {
                "mean": round(float(np.mean(took)), 2),
                "p50": round(float(np.median(took)), 2),
                "p90": round(float(np.percentile(took, 90)), 2),
            }
            for on, took in wrong_ms.items()
        },
        "bytes_per_image": int(np.mean([f.nbytes for f in stored + [c[0] for c in clip_features]])),
        "wrong_pairs": len(wrong),
        "wrong_max": int(wrong.max()),
        # every wrong pair with 4+ inliers, to look at: drawings of one set (playing cards, jigsaw
        # pieces) share whole parts, and verification finds the shared part
        "wrong_high": [
            [names[pairs[k][0]], names[pairs[k][1]], int(wrong[k])]
            for k in np.argsort(-wrong).tolist()
            if wrong[k] >= 4
        ],
        "levels": [
            {
                "inliers": n,
                "wrong": int((wrong >= n).sum()),
                "wrong_other_sets": int(
                    sum(
                        w >= n and not same_set(names[i], names[j])
                        for (i, j, _), w in zip(pairs, wrong, strict=True)
                    )
                ),
                "copies": share_reaching(every_copy, n),
                "per_edit": {name: share_reaching(v, n) for name, v in true.items()},
            }
            for n in LEVELS
        ],
    }
    if fits:
        run["fits"] = fit_summary(true_fits, wrong_fits, pairs, names)
    return run


def fit_record(result, query, stored, mirror) -> dict:
    """Each transform's inliers on one pair, and what ``verify`` decided."""
    return inliers_by_fit(query, stored, mirror) | {"verified": result.verified, "warped": result.warped}


def fit_summary(true_fits: dict[str, list[dict]], wrong_fits: list[dict], pairs, names) -> dict:
    """Per transform: the wrong pairs' inliers against the copies' per edit; and verify's own
    decisions (the fallback fits only where the similarity fails)."""
    models = {}
    for model in FITS:
        wrong = np.array([w[model] for w in wrong_fits])
        models[model] = {
            "wrong_max": int(wrong.max()),
            "wrong_high": [
                [names[pairs[k][0]], names[pairs[k][1]], int(wrong[k])]
                for k in np.argsort(-wrong).tolist()[:12]
                if wrong[k] >= 6
            ],
            "levels": [
                {
                    "inliers": n,
                    "wrong": int((wrong >= n).sum()),
                    "per_edit": {e: share_reaching([t[model] for t in v], n) for e, v in true_fits.items()},
                }
                for n in LEVELS
            ],
        }
    # What the fallback decides on: the pairs whose similarity fit does not verify.
    failing = [w for w in wrong_fits if w["similarity"] < VERIFIED_INLIERS]
    fallback = np.array([max(w["affine"], w["homography"]) for w in failing] or [0])
    decided = {
        "wrong_failing_similarity": len(failing),
        "wrong_fallback_max": int(fallback.max()),
        "wrong_fallback_levels": {n: int((fallback >= n).sum()) for n in LEVELS},
        "copies_failing_similarity": {
            e: sum(t["similarity"] < VERIFIED_INLIERS for t in v) for e, v in true_fits.items()
        },
        "copies_fallback": {
            e: sorted(max(t["affine"], t["homography"]) for t in v if t["similarity"] < VERIFIED_INLIERS)
            for e, v in true_fits.items()
        },
        "wrong_verified": int(sum(w["verified"] for w in wrong_fits)),
        "wrong_warped": int(sum(w["warped"] for w in wrong_fits)),
        "per_edit_verified": {
            e: round(float(np.mean([t["verified"] for t in v])), 3) for e, v in true_fits.items()
        },
        "per_edit_warped": {
            e: round(float(np.mean([t["warped"] for t in v])), 3) for e, v in true_fits.items()
        },
    }
    return {"models": models, "verify": decided}


def share_reaching(inliers: list[int], n: int) -> float:
    return round(float(np.mean(np.array(inliers) >= n)), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verification", description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=40)
    parser.add_argument("--clip-art", type=int, default=300)
    parser.add_argument("--wrong-pairs", type=int, default=2000)
    parser.add_argument("--detectors", default="sift,orb")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fits",
        action="store_true",
        help="also each transform's inliers (similarity, affine, homography) on copies and wrong pairs",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--engine", action="store_true", help="also search: recall@1 and latency by verify_top"
    )
    parser.add_argument("--verify-tops", default="0,3,5")
    parser.add_argument("--cache-sizes", default="0,512", help="stored-feature cache sizes (0: always cold)")
    parser.add_argument("--engine-clip-art", type=int, default=200)
    parser.add_argument(
        "--part-views", default="0,1", help="search without (0) and with (1) the part views of crops"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(args.seed)
    photos = originals(args.originals)
    edited = {name: [edited_copy(im, name, rng) for im in photos] for name in EDITS}
    clips, names = clip_art(args.clip_art, args.seed)
    pairs = nearest_pairs(clips, args.wrong_pairs)
    LOG.info(
        "%d originals x %d edits; %d wrong pairs (hash %d..%d bits)",
        len(photos),
        len(EDITS),
        len(pairs),
        pairs[0][2],
        pairs[-1][2],
    )
    runs = (
        [measure(d, photos, edited, clips, pairs, names, args.fits) for d in args.detectors.split(",")]
        if args.detectors
        else []
    )
    engine = []
    if args.engine:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            tops = [int(t) for t in args.verify_tops.split(",")]
            caches = [int(c) for c in args.cache_sizes.split(",")]
            parts = [bool(int(p)) for p in args.part_views.split(",")]
            engine = engine_run(
                photos, edited, clips[: args.engine_clip_art], tops, caches, parts, Path(work)
            )
    record = {
        "command": " ".join(["python -m bench.verification", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_facts(),
        "runs": runs,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "verification.json").write_text(json.dumps(record, indent=1))
    facts = record["machine"]
    lines = [
        f"# Verification: {len(photos)} originals x {len(EDITS)} edits, {len(pairs)} wrong clip-art pairs",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {facts.get('cpu')}, {facts.get('cores')} cores; load {facts.get('load_average')};"
        f" {facts.get('date')}",
        "",
    ]
    for run in runs:
        header = ["inliers >=", "wrong pairs", "of them across sets", "all copies", *EDITS]
        rows = [
            [
                level["inliers"],
                level["wrong"],
                level["wrong_other_sets"],
                level["copies"],
                *(level["per_edit"][e] for e in EDITS),
            ]
            for level in run["levels"]
        ]
        lines += [
            f"## {run['detector']}: extract {run['extract_ms']} ms/image,"
            f" verify p50 {run['verify_ms_p50']} ms/pair,"
            f" {run['bytes_per_image']} bytes/image, most inliers of a wrong pair {run['wrong_max']};"
            f" wrong pairs' verify ms without / with the fallback fits: {run['wrong_verify_ms']}",
            "",
            markdown_table(header, rows),
            "",
        ]
        lines += fit_tables(run)
    if engine:
        header = ["verify top", "feature cache", "part views", "p50 ms", "p90 ms", "recall@1 all", *EDITS]
        rows = [
            [
                e["verify_top"],
                e["cache"],
                "yes" if e["part_views"] else "no",
                e["p50_ms"],
                e["p90_ms"],
                e["recall_at_1_all"],
                *e["recall_at_1"].values(),
            ]
            for e in engine
        ]
        lines += [
            "## search: recall@1 of the edited copies and latency (in process)",
            "",
            markdown_table(header, rows),
            "",
        ]
    (args.results_dir / "verification.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def fit_tables(run: dict) -> list[str]:
    """Markdown: each transform's wrong pairs and copies per inlier level, and verify's decisions."""
    if "fits" not in run:
        return []
    lines = []
    for model, summary in run["fits"]["models"].items():
        header = ["inliers >=", "wrong pairs", *EDITS]
        rows = [[lv["inliers"], lv["wrong"], *(lv["per_edit"][e] for e in EDITS)] for lv in summary["levels"]]
        high = "; ".join(f"{a} / {b}: {n}" for a, b, n in summary["wrong_high"]) or "none at 6+"
        lines += [
            f"### {run['detector']}, {model} alone (every pair):"
            f" most inliers of a wrong pair {summary['wrong_max']}",
            "",
            markdown_table(header, rows),
            "",
            f"Wrong pairs with most inliers: {high}",
            "",
        ]
    decided = run["fits"]["verify"]
    header = ["", "wrong pairs", *EDITS]
    rows = [
        ["verified", decided["wrong_verified"], *(decided["per_edit_verified"][e] for e in EDITS)],
        [
            "of them by a fallback fit",
            decided["wrong_warped"],
            *(decided["per_edit_warped"][e] for e in EDITS),
        ],
    ]
    copies = "; ".join(f"{e}: {v}" for e, v in decided["copies_fallback"].items() if v)
    return lines + [
        f"### {run['detector']}: verify as it decides",
        "",
        markdown_table(header, rows),
        "",
        f"Where the similarity fails ({decided['wrong_failing_similarity']} wrong pairs), the fallback fits'"
        f" best inliers: wrong pairs at most {decided['wrong_fallback_max']}"
        f" (>= level: {decided['wrong_fallback_levels']}); copies per edit: {copies or 'none'}",
        "",
    ]


# the engine: recall@1 and latency with and without verification ---------------------------------


def engine_run(
    photos, edited, clips, tops: list[int], cache_sizes: list[int], parts: list[bool], work: Path
) -> list[dict]:
    """Index the photos among the clip art, query every edited copy with each ``verify_top``,
    feature cache size and part-views setting."""
    from twice.library import Library
    from twice.options import Options
    from twice.search import engine as engine_module

    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(photos):
        image.save(folder / f"photo-{k:03d}.png")
    for k, image in enumerate(clips):
        image.save(folder / f"clip-{k:03d}.png")
    options = Options.from_env().with_overrides(data_dir=work / "data")
    settings = [
        (top, cache, part)
        for top, cache, part in itertools.product(tops, cache_sizes, parts)
        if top or cache == cache_sizes[0]
    ]
    caches = {setting: engine_module.FeatureCache(setting[1]) for setting in settings}
    hits: dict = {setting: {} for setting in settings}
    took: dict = {setting: [] for setting in settings}
    with Library(options) as library:
        library.add([folder], progress=False)
        library.search_json(photos[0], 5)  # warm-up: the model's first call
        engine = library.engine()
        # Settings take turns query by query, so that the shared machine's load falls on all alike.
        for name, queries in edited.items():
            for k, query in enumerate(queries):
                data = image_bytes(query)
                for setting in settings:
                    engine.verify_top, engine.stored_features = setting[0], caches[setting]
                    engine.part_views = setting[2]
                    started = time.perf_counter()
                    response = library.search_json(data, 5)
                    took[setting].append((time.perf_counter() - started) * 1000)
                    first = response["results"][0]["source"] if response["results"] else ""
                    hits[setting].setdefault(name, []).append(Path(first).name == f"photo-{k:03d}.png")
    runs = []
    for setting in settings:
        found = hits[setting]
        runs.append(
            {
                "verify_top": setting[0],
                "cache": setting[1],
                "part_views": setting[2],
                "p50_ms": round(float(np.median(took[setting])), 1),
                "p90_ms": round(float(np.percentile(took[setting], 90)), 1),
                "recall_at_1": {n: round(float(np.mean(v)), 3) for n, v in found.items()},
                "recall_at_1_all": round(float(np.mean([h for v in found.values() for h in v])), 3),
            }
        )
        LOG.info("engine %s", runs[-1])
    return runs


def image_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
