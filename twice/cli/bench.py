"""``twice bench``: forwards to the benchmarks in a source checkout's ``bench/``.

The benchmarks measure the product and are not part of the installed package, so twice knows
them only by name: it looks for ``bench/`` in the working directory, then beside the source
tree it runs from (an editable install), and hands the rest of the command line to
``bench.commands.main``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import twice

from .commands import help_for


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help=help_for("bench"),
        description="Forwarded to bench/ of a source checkout: `twice bench --help` lists its kinds.",
        add_help=False,  # --help goes to the bench's own parser
    )
    p.add_argument("forwarded", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_bench)


def checkout_roots() -> list[Path]:
    return [Path.cwd(), Path(twice.__file__).resolve().parents[1]]


def load_bench():
    for root in checkout_roots():
        if (root / "bench" / "commands.py").is_file():
            if str(root) not in sys.path:
                sys.path.append(str(root))
            return importlib.import_module("bench.commands")
    raise RuntimeError(
        "the benchmarks live in bench/ of a source checkout and are not installed;"
        " run `twice bench` from a clone of the repository"
    )


def run_bench(args, options) -> int:
    argv = list(args.forwarded)
    if args.quiet and not {"-q", "--quiet"} & set(argv):
        argv.insert(0, "--quiet")
    return load_bench().main(argv, options)
