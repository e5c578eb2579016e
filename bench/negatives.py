"""Never-indexed clip art against a large clip-art index: how many are called `duplicate`.

Draws files at random from the Debian clip-art packages (openclipart-png, tuxpaint-stamps-default)
as they are, numbered series and files repeated across folders included (the bench's own
negatives leave those out), indexes some as `twice reindex` does and searches the others as
`twice search` does, shipped model and thresholds. Each `duplicate` answer is listed with the
signals that made it and sorted into kinds (identical bytes, thin-line stars, playing cards,
jigsaw pieces, other numbered or coloured series, the rest), so a reader can judge which are
true copies: openclipart holds some drawings twice under two names.

``--copies N`` also searches N edited copies of indexed drawings (every edit family in turn,
parameters drawn from its ranges, 2-3 at once included): the other side of the same trade, how
many copies of clip art are still called `duplicate` of their original. A rule that removes
wrong answers here must be weighed against the copies it loses here, not only against the
photo-like copies of `twice bench quality`.

    python -m bench.negatives --indexed 2000 --queries 1000 --copies 400
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from twice.augment.families import FAMILIES, draw_combo, draw_edit
from twice.augment.sources import APT_SOURCES, flatten_rgb
from twice.augment.transforms import apply_transforms
from twice.imageio import ImageError, iter_image_files, load_image
from twice.library import Library
from twice.model.training_data import Sources, gather_paths
from twice.options import Options

from .machine import machine_facts
from .metrics import wilson

ROOT = Path(__file__).resolve().parents[1]
COPY_FAMILIES = (*FAMILIES, "combo")  # "combo": 2-3 families at once
COPY_SIDE = 1024  # px: drawings are copied at most this large (some are posters of 10k px)
SOURCES = ("openclipart", "tuxpaint")
KINDS = (
    ("stars", r"/stars/"),
    ("playing cards", r"/cards/"),
    ("jigsaw pieces", r"/jigsaw/"),
    (
        "other series (arrows, buttons, LEDs, clocks, flags, letters, smilies)",
        r"arrow|button|led_|clock|flags|alphabets|smil",
    ),
)


def clip_art_files(seed: int, unseen: bool = False) -> list[tuple[str, Path]]:
    """The packages' files in a seeded random order; ``unseen``: less those that `twice train`
    draws by default (``twice.model.training_data``), so a model is judged on drawings it never
    trained on."""
    trained = training_files() if unseen else set()
    files = []
    for name in SOURCES:
        folder = APT_SOURCES[name][1]
        if not folder.is_dir():
            raise SystemExit(f"{folder} not found: apt-get install {APT_SOURCES[name][0]}")
        files += [(name, path) for path in sorted(iter_image_files([folder])) if path not in trained]
    random.Random(seed).shuffle(files)
    return files


def training_files() -> set[Path]:
    with tempfile.TemporaryDirectory(prefix="twice-negatives-") as unused:
        drawn = gather_paths(Sources(names=SOURCES), Path(unused))
    return {Path(path) for paths in drawn.values() for path in paths}


SAME_PICTURE_SIDE = 64  # px: pictures compared at this size, each of the query's 8 turns and mirrors
SAME_PICTURE_LEVELS = 1.0  # mean |difference| in grey levels (of 255) under which they are one picture


def kind_of(query: str, match: str, decided_by: list[str]) -> str:
    if "exact" in decided_by:
        return "identical bytes"
    if same_picture(Path(query), Path(match)):
        return SAME_PICTURE
    return next((kind for kind, pattern in KINDS if re.search(pattern, query)), "other")


SAME_PICTURE = "the same picture turned or mirrored (one drawing under two names)"


def same_picture(query: Path, match: Path) -> bool:
    """Whether the query is, pixel for pixel, the match turned or mirrored (openclipart files
    some drawings twice: an arrow pointing left and the same file mirrored, pointing right). Such
    an answer is right by twice's own rules, where every turn and mirror is a copy."""
    a, b = _small_picture(query), _small_picture(match)
    views = (np.rot90(a, k)[:, ::flip] for k in range(4) for flip in (1, -1))
    return min(float(np.abs(view - b).mean()) for view in views) <= SAME_PICTURE_LEVELS


def _small_picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        flat = flatten_rgb(image)  # transparent drawings as they show on a page
    side = (SAME_PICTURE_SIDE, SAME_PICTURE_SIDE)
    return np.asarray(flat.resize(side, Image.Resampling.BILINEAR), np.float32)


def write_copies(originals: list[Path], count: int, seed: int, folder: Path) -> list[dict]:
    """One edited copy each of ``count`` of ``originals`` (chosen with ``seed``), the edit
    families in turn (``COPY_FAMILIES``), written to ``folder`` as PNG; an original that
    cannot be read (a decompression bomb by twice's limits) gets none."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = random.Random(seed).sample(range(len(originals)), min(count, len(originals)))
    copies = []
    for n, i in enumerate(chosen):
        family = COPY_FAMILIES[n % len(COPY_FAMILIES)]
        specs = draw_combo(rng) if family == "combo" else draw_edit(family, rng)
        try:
            image = load_image(originals[i]).image
        except ImageError:
            continue
        image.thumbnail((COPY_SIDE, COPY_SIDE))
        path = folder / f"copy-{n:04d}-{family}.png"
        apply_transforms(image, specs).convert("RGB").save(path)
        edit = "+".join(map(str, specs))
        copies.append({"path": path, "original": originals[i], "family": family, "edit": edit})
    return copies


def search_copies(library: Library, copies: list[dict]) -> list[dict]:
    """Each copy's top answer: its original (or the same bytes under another name) first, and
    whether called duplicate."""
    outcomes = []
    for copy in copies:
        top = library.search_json(copy["path"])["results"][:1]  # the default k, as users ask
        match = Path(top[0]["source"]).resolve() if top else None
        first = match is not None and (
            match == copy["original"] or match.read_bytes() == copy["original"].read_bytes()
        )
        verdict = top[0]["verdict"] if top else None
        outcomes.append(
            {
                "copy": copy["path"].name,
                "original": str(copy["original"]),
                "family": copy["family"],
                "edit": copy["edit"],
                "first": first,
                "duplicate": first and verdict == "duplicate",
                "wrong_duplicate": not first and verdict == "duplicate",
                "match": None if match is None else str(match),
                "summary": top[0]["evidence"]["summary"] if top else "",
            }
        )
    return outcomes


def copy_figures(outcomes: list[dict]) -> dict:
    """Per family and in all: copies, found first, called duplicate, wrong duplicates."""

    def tally(rows: list[dict]) -> dict:
        return {
            "copies": len(rows),
            "first": sum(r["first"] for r in rows),
            "duplicate": sum(r["duplicate"] for r in rows),
            "wrong_duplicate": sum(r["wrong_duplicate"] for r in rows),
        }

    families = sorted({r["family"] for r in outcomes}, key=COPY_FAMILIES.index)
    return {
        "all": tally(outcomes),
        "by_family": {f: tally([r for r in outcomes if r["family"] == f]) for f in families},
    }


def run(indexed: int, queries: int, seed: int, work: Path, unseen: bool = False, copies: int = 0) -> dict:
    files = clip_art_files(seed, unseen)
    if len(files) < indexed + queries:
        raise SystemExit(f"only {len(files)} clip-art files, asked for {indexed} + {queries}")
    folder = work / "in"
    folder.mkdir(parents=True)
    for i, (source, path) in enumerate(files[:indexed]):
        (folder / f"{source}-{i:05d}{path.suffix}").symlink_to(path)
    options = Options.from_env().with_overrides(data_dir=work / "data")
    edited = write_copies([path for _, path in files[:indexed]], copies, seed, work / "copies")
    answers, skipped = [], 0
    with Library(options) as library:
        started = time.perf_counter()
        summary = library.add([folder], progress=True)
        index_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for _, path in files[indexed : indexed + queries]:
            try:
                # The default k, as users ask: more candidates can put another look-alike first.
                top = library.search_json(path)["results"][:1]
            except ImageError:
                skipped += 1  # too many pixels, unreadable: refused as a user's query would be
                continue
            if top and top[0]["verdict"] == "duplicate":
                evidence = top[0]["evidence"]
                answers.append(
                    {
                        "query": str(path),
                        "match": str(Path(top[0]["source"]).resolve()),
                        "score": top[0]["score"],
                        "decided_by": evidence["decided_by"],
                        "summary": evidence["summary"],
                        "kind": kind_of(str(path), top[0]["source"], evidence["decided_by"]),
                    }
                )
        query_seconds = time.perf_counter() - started
        copy_outcomes = search_copies(library, edited)
    searched = queries - skipped
    return {
        "indexed": summary.added,
        "searched": searched,
        "skipped": skipped,
        "seed": seed,
        "unseen": unseen,
        "index_seconds": round(index_seconds, 1),
        "query_ms": round(query_seconds / max(searched, 1) * 1000, 1),
        "duplicates": len(answers),
        "by_kind": dict(collections.Counter(a["kind"] for a in answers).most_common()),
        "answers": answers,
        "copies": copy_figures(copy_outcomes) if copy_outcomes else None,
        "copy_outcomes": copy_outcomes,
    }


def markdown(result: dict, command: str, machine: dict) -> str:
    lines = [
        "# Never-indexed clip art called `duplicate`",
        "",
        f"- command: `{command}`",
        f"- machine: {machine['cpu']}, {machine['cores']} cores;"
        f" load {machine['load_average']}; {machine['date']}",
        "",
        f"{result['searched']} never-indexed files searched against {result['indexed']} indexed ones"
        f" (seed {result['seed']}; {result['skipped']} refused, e.g. over the pixel limit"
        f"{'; none of them drawn by `twice train`' if result.get('unseen') else ''}):"
        f" **{result['duplicates']} called duplicate**, {others(result)} of them neither identical bytes"
        " nor one picture turned or mirrored. By kind:",
        "",
        "| kind | called duplicate |",
        "| --- | ---: |",
        *(f"| {kind} | {n} |" for kind, n in result["by_kind"].items()),
        "",
        "Every answer (query, match, what decided it):",
        "",
        *(f"- {a['query']} -> {a['match']}: {a['summary']}" for a in result["answers"]),
    ]
    if result.get("copies"):
        lines += ["", *copies_markdown(result["copies"], result["copy_outcomes"])]
    return "\n".join(lines) + "\n"


def others(result: dict) -> int:
    """The answers that are wrong unless a person judges the two drawings one: all but identical
    bytes and one picture turned or mirrored."""
    right = result["by_kind"].get("identical bytes", 0) + result["by_kind"].get(SAME_PICTURE, 0)
    return result["duplicates"] - right


def copies_markdown(figures: dict, outcomes: list[dict]) -> list[str]:
    total = figures["all"]

    def row(name: str, t: dict) -> str:
        low, high = wilson(t["duplicate"], t["copies"]) or (0.0, 0.0)
        share = t["duplicate"] / t["copies"] if t["copies"] else 0.0
        return (
            f"| {name} | {t['copies']} | {t['first']} | {t['duplicate']} |"
            f" {share:.2f} ({low:.2f}–{high:.2f}) | {t['wrong_duplicate']} |"
        )

    return [
        "## Edited copies of indexed drawings",
        "",
        f"{total['copies']} copies, one edit each (families in turn, parameters from their ranges):"
        f" **{total['duplicate']} called duplicate of their original**, {total['wrong_duplicate']}"
        " called duplicate of another drawing.",
        "",
        "| edit | copies | original first | called duplicate | duplicate recall (95 % CI)"
        " | duplicate of another |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
        *(row(family, t) for family, t in figures["by_family"].items()),
        row("**all**", total),
        "",
        "Copies not called duplicate of their original:",
        "",
        *(
            f"- {o['copy']} `{o['edit']}` of {o['original']}: "
            + (o["summary"] if o["first"] else f"first answer {o['match']}: {o['summary']}")
            for o in outcomes
            if not o["duplicate"]
        ),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.negatives", description=__doc__.split("\n")[0])
    parser.add_argument("--indexed", type=int, default=2000, help="clip-art files indexed (default 2000)")
    parser.add_argument(
        "--queries", type=int, default=1000, help="never-indexed files searched (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--unseen",
        action="store_true",
        help="only files `twice train` does not draw by default (drawings the model never saw)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=0,
        help="also search this many edited copies of indexed drawings (default 0)",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--tag", default="", help="name the results negatives-TAG")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.negatives", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="twice-negatives-") as work:
        result = run(args.indexed, args.queries, args.seed, Path(work), args.unseen, args.copies)
    name = f"negatives-{args.tag}" if args.tag else "negatives"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine, **result}
    (args.results_dir / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (args.results_dir / f"{name}.md").write_text(markdown(result, command, machine))
    print(
        f"{result['duplicates']} of {result['searched']} called duplicate, {others(result)} neither"
        f" identical bytes nor one picture turned or mirrored: {result['by_kind']}"
    )
    if result["copies"]:
        total = result["copies"]["all"]
        print(f"copies of indexed drawings called duplicate: {total['duplicate']} of {total['copies']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
