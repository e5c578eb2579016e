"""``twice report``: every duplicate group in the collection, as HTML, JSON or CSV."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path

from twice.files import atomic_write
from twice.search.pairs import METHODS
from twice.search.report import FORMATS, build_report, format_for, render, run_benchmark, summary_lines

from .commands import help_for

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help=help_for("report"),
        description="Find all pairs of indexed images that search would call duplicates (CNN score at"
        " or above the duplicate threshold, or perceptual-hash distance, best of 8 rotations/flips,"
        " at or below the duplicate hash threshold; both stored with the model version), join"
        " them into groups, pick each group's original (largest resolution, then earliest added,"
        " then smallest id) and write a report. Known augmented variants are counted, not listed,"
        " unless --include-variants. Pairs and hashes are cached, so a report after adding"
        " images only searches the new ones.",
    )
    p.add_argument("--format", choices=FORMATS, help="output format (default: from -o's suffix, else html)")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="where to write the report ('-' for stdout; default: DATA_DIR/reports/report-<time>.<format>)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="CNN score cut-off (default: the model's duplicate threshold); the hash cut-off stays",
    )
    p.add_argument("--include-variants", action="store_true", help="list known augmented variants too")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="knn",
        help="pair search: k-NN with a cut-off (default) or range search",
    )
    p.add_argument("--nprobe", type=int, help="IVF lists searched per image when the index is approximate")
    p.add_argument("--full", action="store_true", help="recompute every pair instead of reusing cached ones")
    p.add_argument(
        "--no-record", action="store_true", help="do not remember this report for the next 'what changed'"
    )
    p.add_argument(
        "--bench",
        metavar="N[,N...]",
        help="instead of a report: time synthetic reports of N vectors (e.g. 10000,100000) and print a table",
    )
    p.add_argument(
        "--bench-index",
        default="flat,ivf",
        metavar="KINDS",
        help="index kinds for --bench (default flat,ivf)",
    )
    p.add_argument("--bench-dim", type=int, default=256, help="vector dimension for --bench (default 256)")
    p.set_defaults(func=run_report)


def run_report(args, options) -> int:
    if args.bench:
        return run_bench(args, options)
    fmt = format_for(args.output, args.format)
    report = build_report(
        options,
        threshold=args.threshold,
        include_variants=args.include_variants,
        method=args.method,
        incremental=not args.full,
        record=not args.no_record,
        progress=not args.quiet,
        nprobe=args.nprobe,
        workers=options.workers,
    )
    to_stdout = args.output == "-"
    out_path = None if to_stdout else Path(args.output or default_output(options, fmt))
    text = render(report, fmt, out_path, progress=not args.quiet and fmt == "html")
    info = sys.stderr if to_stdout else sys.stdout
    if to_stdout:
        sys.stdout.write(text)
    else:
        atomic_write(out_path, text.encode("utf-8"))
    if not args.quiet:
        print("\n".join(summary_lines(report)), file=info)
    if out_path is not None:
        print(f"wrote {out_path}", file=info)
    return 0


def default_output(options, fmt: str) -> Path:
    return Path(options.reports_dir) / f"report-{datetime.now():%Y%m%d-%H%M%S}.{fmt}"


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--bench wants sizes like 10000,100000, got {text!r}") from None
    if not sizes or min(sizes) < 100:
        raise ValueError(f"--bench sizes must be at least 100, got {text!r}")
    return sizes


def run_bench(args, options) -> int:
    kinds = [k.strip() for k in args.bench_index.split(",") if k.strip()]
    results = []
    for n in parse_sizes(args.bench):
        for kind in kinds:
            result = run_benchmark(
                n, kind, dim=args.bench_dim, method=args.method, workdir=options.data_dir, nprobe=args.nprobe
            )
            results.append(result)
            print(bench_row(result), flush=True)
    out = Path(options.reports_dir) / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    atomic_write(out, json.dumps(results, indent=2).encode())
    print(f"wrote {out}")
    return 0 if all(r["full"]["found_all"] and r["incremental"]["found_all"] for r in results) else 1


def bench_row(r: dict) -> str:
    full, inc = r["full"], r["incremental"]
    grow = full["peak_rss_mb"] - full["rss_before_mb"]
    kind = r["index"] if r["nprobe"] is None else f"{r['index']}/nprobe={r['nprobe']}"
    return (
        f"n={r['n']:>8} {kind:<4} {r['method']:<5} full {full['seconds']:>7.2f}s"
        f" peak {full['peak_rss_mb']:>6.0f} MB (+{grow:.0f} over imports) groups {full['groups_found']:>6}"
        f" all found {full['found_all']}; +{r['grow']['added']} vectors: incremental {inc['seconds']:>6.2f}s"
        f" all found {inc['found_all']}; recall {full['recall']}"
    )
