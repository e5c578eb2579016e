"""``twice report``: every duplicate group in the collection, as HTML, JSON or CSV."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

from twice.files import atomic_write
from twice.search.pairs import METHODS
from twice.search.report import build_report
from twice.search.report_render import FORMATS, format_for, render, summary_lines

from .commands import help_for

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help=help_for("report"),
        description="Find all pairs of indexed images that search would call duplicates (the same"
        " verdict: CNN score, perceptual-hash distance over 8 rotations/flips, the images' hash"
        " structure, and local-feature verification where it can change the verdict; thresholds"
        " stored with the model version), group each original with its duplicates (no chains of"
        " weak links; the original has the most duplicates in its group, then the largest"
        " resolution, then was added first) and write a report. Known augmented variants are"
        " counted, not listed, unless --include-variants. Pairs and hashes are cached, so a"
        " report after adding images only searches the new ones.",
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
    p.set_defaults(func=run_report)


def run_report(args, options) -> int:
    from twice.model import Embedder

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
        shipped=checkpoint_thresholds(options),
        embedder=lambda: Embedder.from_options(options),
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


def checkpoint_thresholds(options) -> dict | None:
    """The thresholds the checkpoint search loads ships with, read from its metadata without
    building the network (None: no twice checkpoint, or one that ships none)."""
    from twice.model.weights import SHIPPED_CHECKPOINT, read_shipped_thresholds

    use_shipped = options.shipped_checkpoint and SHIPPED_CHECKPOINT.exists()
    path = Path(options.checkpoint) if options.checkpoint else SHIPPED_CHECKPOINT if use_shipped else None
    return read_shipped_thresholds(path) if path is not None and path.is_file() else None


def default_output(options, fmt: str) -> Path:
    return Path(options.reports_dir) / f"report-{datetime.now():%Y%m%d-%H%M%S}.{fmt}"
