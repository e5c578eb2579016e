"""The ``twice`` command: global options, logging, and one subcommand per stage.

Each subcommand group is a module of this package with ``register(subparsers) -> None``
that adds a parser whose ``func(args, options) -> int`` does the work; this file only wires
them together. Only the module of the command being run is imported (``commands.COMMANDS``),
so ``twice --help`` and quick commands do not wait for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from twice.options import Options
from twice.version import __version__

from .commands import COMMANDS

LOG = logging.getLogger("twice")


def global_options() -> argparse.ArgumentParser:
    """The options that come before the subcommand."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--version", action="version", version=f"twice {__version__}")
    parser.add_argument(
        "--data-dir",
        help="where the catalog, index, images and models live (env TWICE_DATA_DIR, default index_data/)",
    )
    parser.add_argument(
        "--db-url",
        help="the catalog database: sqlite:///PATH or postgresql://USER@HOST/DB"
        " (env TWICE_DB_URL, default DATA_DIR/catalog.sqlite)",
    )
    parser.add_argument("--checkpoint", help="model checkpoint to load (env TWICE_CHECKPOINT)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars"
    )
    return parser


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twice",
        description="Duplicate-aware image search: index folders, find copies and near-copies.",
        parents=[global_options()],
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = chosen_command(argv or [])
    if chosen:
        importlib.import_module(f"{__name__}.{COMMANDS[chosen][0]}").register(subparsers)
    for name, (_, help_text) in COMMANDS.items():
        if name not in subparsers.choices:  # listed in --help; parsed only when chosen
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand in ``argv``: the first word after the global options and their values
    (read by the same option definitions; any mistake there is left for the full parse)."""
    probe = argparse.ArgumentParser(add_help=False, parents=[global_options()], exit_on_error=False)
    probe.add_argument("command", nargs="?")
    probe.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        command = probe.parse_known_args(argv)[0].command
    except argparse.ArgumentError:
        return None
    return command if command in COMMANDS else None


def options_from_args(args: argparse.Namespace) -> Options:
    return Options.from_env().with_overrides(
        data_dir=args.data_dir, db_url=args.db_url, checkpoint=args.checkpoint, device=args.device
    )


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time: a second ``main()`` in one process
    (tests, notebooks) must not write to the stream the first one saw, which may be closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose < 2:  # third-party chatter
        for noisy in ("PIL", "urllib3", "faiss.loader", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "forwarded"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # a command that hands its arguments on (twice bench) takes them all
        args.forwarded = extra + args.forwarded
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        options = options_from_args(args)
        return int(args.func(args, options) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        if args.verbose:
            LOG.exception("failed")
        print(f"twice {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
