"""``twice check [--repair]``: verify a data directory; repair what needs no guessing."""

from __future__ import annotations

import json

from twice.indexer.check import check_data_dir

from .commands import help_for


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help=help_for("check"),
        description="Verify the data directory: catalog integrity (PRAGMA integrity_check),"
        " index ids against catalog rows, every stored file against its sha256, perceptual"
        " hashes of the current version, stray temporary files. Exit status 1 while faults"
        " remain. Safe while the service runs.",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what needs no guessing: drop orphan vectors, move a damaged index aside,"
        " copy missing or damaged files back from unchanged sources, recompute hashes, remove"
        " stray files, and embed pending images (loads the model); the rest is listed",
    )
    p.add_argument(
        "--quick", action="store_true", help="compare file sizes instead of hashing every stored file"
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run_check)


def run_check(args, options) -> int:
    report = check_data_dir(options, repair=args.repair, hash_files=not args.quick)
    embedded = None
    if args.repair and report.pending:
        from twice.library import Library  # the model: only when there is something to embed

        with Library(options) as library:
            embedded = library.add([], progress=not args.quiet)
        for finding in report.findings:
            if finding.kind == "pending":
                finding.repaired = f"embedded {embedded.embedded_pending} of {len(finding.ids)}"
    if args.json:
        print(json.dumps({**report.to_dict(), "embedded": embedded and embedded.to_dict()}, indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
