"""``twice backup DEST`` and ``twice restore SRC``: consistent snapshots of a data directory."""

from __future__ import annotations

import json

from twice.indexer.backup import backup, restore

from .commands import help_for


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "backup",
        help=help_for("backup"),
        description="Copy the catalog (SQLite's online backup API), the index and every stored"
        " image into DEST, a new folder, while the service and reindexes keep running. Files"
        " are checked against their sha256 on the way. PostgreSQL catalogs: use pg_dump.",
    )
    p.add_argument("dest", metavar="DEST", help="a new (or empty) folder for the backup")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_backup)

    p = subparsers.add_parser(
        "restore",
        help=help_for("restore"),
        description="Make the data directory (--data-dir, which must be new or empty) from the"
        " backup SRC, then check it (`twice check --repair` without the model): vectors of"
        " images deleted while the backup ran are dropped; images added then are pending and"
        " the next `twice reindex` embeds them.",
    )
    p.add_argument("source", metavar="SRC", help="a folder written by `twice backup`")
    p.add_argument("--json", action="store_true", help="print the check of the result as JSON")
    p.set_defaults(func=run_restore)


def run_backup(args, options) -> int:
    summary = backup(options, args.dest)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else "\n".join(summary.lines()))
    return 0


def run_restore(args, options) -> int:
    report = restore(args.source, options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"restored {args.source} into {options.data_dir}")
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
