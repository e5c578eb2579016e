"""``twice demo``: the main job end to end on a generated sample collection (no network)."""

from __future__ import annotations

import io

from augment import ORIGINAL_FOUR, apply_transform, augment_catalog, make_collection
from indexer import Catalog, Indexer, reindex
from indexer.imageio import load_image
from model import Embedder
from search import SearchEngine

from .commands import print_results

QUERY_JPEG_QUALITY = 92


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="index a generated sample collection with its variants, then search it",
        description="Generate COUNT sample images (once), index them, add the original system's"
        " four variants of each (rotate, mirror, bright, dark), index those, then query with"
        " re-encoded transformed copies and show what comes back.",
    )
    p.add_argument("--count", type=int, default=150, help="sample images to generate (default 150)")
    p.add_argument("--queries", type=int, default=3, help="originals to query with (default 3)")
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
    print("== 4. search with transformed, re-encoded copies (not byte-identical to anything stored)")
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
    finally:
        engine.close()
    print(f"== top result belongs to the query's original (itself or one of its variants): {found}/{total}")
    return 0


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
