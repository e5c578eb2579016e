"""``twice demo``: the main job end to end on a generated sample collection (no network)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from twice.augment import ORIGINAL_FOUR, apply_transform, augment_catalog, make_collection
from twice.imageio import load_image
from twice.indexer import Catalog, Indexer, reindex
from twice.model import Embedder
from twice.search import SearchEngine
from twice.search.calibrate import calibrate
from twice.search.report_groups import variant_parents

from .commands import help_for
from .index import print_results

QUERY_JPEG_QUALITY = 92
CHECK_K = 5  # a known variant passes when its original is among its top CHECK_K results


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help=help_for("demo"),
        description="Generate COUNT sample images (once), index them, add the original system's"
        " four variants of each (rotate, mirror, bright, dark), index those, fit the verdict"
        " thresholds on them, then query with re-encoded transformed copies and show what comes back.",
    )
    p.add_argument("--count", type=int, default=150, help="sample images to generate (default 150)")
    p.add_argument("--queries", type=int, default=3, help="originals to query with (default 3)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help=f"skip step 6: search with every stored variant and count its original in the top {CHECK_K}",
    )
    p.set_defaults(func=run_demo)


def run_demo(args, options) -> int:
    if args.count < 1 or args.queries < 1:
        raise ValueError(f"--count and --queries must be at least 1, got {args.count} and {args.queries}")
    progress = not args.quiet
    samples = options.data_dir / "samples"
    print(f"== 1. sample collection: {args.count} images in {samples / 'originals'}")
    originals = make_collection(samples / "originals", args.count)
    embedder = Embedder.from_options(options)
    print(f"== 2. index the originals (model {embedder.version})")
    print("\n".join(reindex([samples / "originals"], options, embedder, progress).lines()))
    print("== 3. add the four variants of every original, then index them")
    indexer = Indexer(options, embedder.version, embedder.dim)
    try:
        print("\n".join(augment_catalog(indexer, ORIGINAL_FOUR, progress=progress).lines(hint=False)))
    finally:
        indexer.close()
    print("\n".join(reindex([], options, embedder, progress).lines()))
    print("== 4. fit the verdict thresholds to this model on the known variant pairs (twice calibrate)")
    fitted = calibrate(options, progress=progress, shipped=embedder.shipped_thresholds)
    print("\n".join(fitted.lines()))
    print("== 5. search with transformed, re-encoded copies (not byte-identical to anything stored)")
    picks = sorted({round(i * (len(originals) - 1) / max(1, args.queries - 1)) for i in range(args.queries)})
    found = total = 0
    engine = SearchEngine.open(options, embedder)
    try:
        for pick in picks:
            original_id = _catalog_id(options, originals[pick])
            for spec in ORIGINAL_FOUR:
                query = _write_query(samples / "queries", originals[pick], spec)
                response = engine.search_file(query, k=3)
                print_results(response)
                top = response["results"][0] if response["results"] else {}
                found += original_id in (top.get("id"), top.get("parent_id"))
                total += 1
        print(f"== top result belongs to the query's original (itself or a variant of it): {found}/{total}")
        if not args.no_check:
            print(f"== 6. search with every stored variant: is its original in the top {CHECK_K}?")
            print("\n".join(variant_check_lines(engine, progress)))
    finally:
        engine.close()
    return 0


def variant_check_lines(engine: SearchEngine, progress: bool) -> list[str]:
    """Per transform: variants whose original is in their top CHECK_K, and whose rank 1 is themselves."""
    parents = variant_parents(engine.catalog)
    rows = engine.catalog.get_many(parents)
    store = Path(engine.options.images_dir)
    found, first, total = Counter(), Counter(), Counter()
    for variant_id in tqdm(sorted(rows), desc="checking variants", unit="query", disable=not progress):
        parent_id, transform = parents[variant_id]
        response = engine.search_file(store / rows[variant_id].stored_path, k=CHECK_K)
        ids = [r["id"] for r in response["results"]]
        found[transform] += parent_id in ids
        first[transform] += ids[:1] == [variant_id]
        total[transform] += 1
    lines = [
        f"  {name:<12} original in top {CHECK_K}: {found[name]}/{n}   itself at rank 1: {first[name]}/{n}"
        for name, n in sorted(total.items())
    ]
    all_found, all_n = sum(found.values()), sum(total.values())
    return lines + [f"  all          original in top {CHECK_K}: {all_found}/{all_n}"]


def _catalog_id(options, path) -> int | None:
    catalog = Catalog(options.catalog_url)
    try:
        row = catalog.by_sha256(load_image(path).sha256)
        return row.id if row else None
    finally:
        catalog.close()


def _write_query(folder, original, spec: str):
    folder.mkdir(parents=True, exist_ok=True)
    image = apply_transform(load_image(original).image, spec)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUERY_JPEG_QUALITY)
    path = folder / f"{original.stem}-{spec.replace(':', '')}.jpg"
    path.write_bytes(buffer.getvalue())
    return path
