"""Core subcommands: reindex, search, status."""

from __future__ import annotations

import json
import sys

from twice.indexer import Catalog, VectorIndex
from twice.indexer.vector_log import VectorLog, log_path
from twice.library import Library
from twice.search.verdicts import CLEAR_OFF, rule_text

from .commands import help_for
from .formatting import edit_words


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reindex",
        help=help_for("reindex"),
        description="Walk the given files and folders, add new images (by sha256) to the"
        " catalog and the vector index, and embed any catalogued image that has no vector yet."
        " Files an earlier run read with the same size and mtime are skipped unread. Shows"
        " images/s while it runs and, at the end, where the time went (decode, hash, store,"
        " embed, write, waiting for decoded images).",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders (none: catalog only)")
    p.add_argument("--batch-size", type=int, help="images per embedding batch (default 32)")
    p.add_argument(
        "--workers", type=int, help="decode worker processes (default: one fewer than the cores, 1 to 4)"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="embed the catalog's pending images on a Ray cluster (ADDRESS, e.g. head:6379; none:"
        " $RAY_ADDRESS or a local one); needs the `ray` extra and the image store on every node",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_reindex)

    p = subparsers.add_parser(
        "search",
        help=help_for("search"),
        description="Embed IMAGE, return its top-k neighbours with a score and a verdict each.",
    )
    p.add_argument("image", metavar="IMAGE", help="query image file")
    p.add_argument("-k", type=int, default=10, help="how many results (1..100, default 10)")
    p.add_argument(
        "--tta",
        choices=["none", "d4"],
        default=None,
        help="d4: embed the query's 8 turns/flips and keep each result's best score (8x CNN time);"
        " default: d4 for a single-view model, none for a d4-pooled one",
    )
    p.add_argument("--json", action="store_true", help="print the full response as JSON")
    p.set_defaults(func=run_search)

    p = subparsers.add_parser("status", help=help_for("status"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_status)


def run_reindex(args, options) -> int:
    options = options.with_overrides(batch_size=args.batch_size, workers=args.workers)
    if args.ray is not None:
        summary = _reindex_on_ray(args, options)
    else:
        with Library(options) as library:
            summary = library.add(args.paths, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0


def _reindex_on_ray(args, options):
    if args.paths:
        raise ValueError(
            f"--ray embeds images already in the catalog; add {args.paths[0]!r} and the other"
            " files first (`twice reindex PATH`, `twice crawl`), or leave out --ray"
        )
    try:
        from twice.indexer.ray_reindex import reindex_on_ray
    except ImportError as exc:
        raise ValueError(f"--ray needs Ray: pip install 'twice[ray]' ({exc})") from exc
    with Library(options) as library:
        summary = reindex_on_ray(options, library.embedder, args.ray or None, progress=not args.quiet)
    return summary


def run_search(args, options) -> int:
    with Library(options) as library:
        response = library.search_json(args.image, args.k, tta=args.tta)
    if args.json:
        print(json.dumps(response, indent=2))
    else:
        print_results(response)
    return 0


def print_results(response: dict, out=None) -> None:
    out = out or sys.stdout  # looked up now: a default bound at import outlives a swapped stdout
    query = response["query"]
    print(f"query {query['source']} ({query['width']}x{query['height']} {query['format']})", file=out)
    if not response["results"]:
        print("  no indexed images", file=out)
    for rank, hit in enumerate(response["results"], 1):
        variant = f"  [{hit['transform']} of #{hit['parent_id']}]" if hit["transform"] else ""
        score = f"{hit['score']:.4f}  {hit['verdict']:<9}"
        print(f"{rank:>3}. {score}  #{hit['id']:<6} {hit['source']}{variant}", file=out)
        if edit := edit_words(hit["evidence"]):
            print(f"     edit: {edit}", file=out)
        print(f"     {hit['evidence']['summary']}", file=out)
    t = response["thresholds"]
    rules = rule_text(
        t.get("hash_duplicate", -1),
        t["duplicate"],
        t.get("clear_score", 1.0),
        t.get("clear_margin", CLEAR_OFF),
    )
    print(
        f"model {response['model']}; duplicate: {rules} ({t['source']}); {response['took_ms']:.0f} ms",
        file=out,
    )


def run_status(args, options) -> int:
    catalog = Catalog(options.catalog_url)
    try:
        record = catalog.index_record()
        header = VectorIndex.read_header(options.index_path) if options.index_path.exists() else None
        status = {
            "data_dir": str(options.data_dir),
            "images": catalog.count(),
            "index": header,
            "index_log_records": logged_vectors(options.index_path, header),
            "index_record_updated": record.updated_at.isoformat() if record else None,
        }
    finally:
        catalog.close()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            print(f"{key}: {value}")
    return 0


def logged_vectors(index_path, header: dict | None) -> int:
    """Vectors in the index's write-ahead log, not yet folded into the file (``header["count"]``)."""
    if header is None:
        return 0
    return len(VectorLog(log_path(index_path), header["model_version"], header["dim"]).read())
