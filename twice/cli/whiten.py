"""``twice whiten``: fit the embedding's PCA whitening on training images."""

from __future__ import annotations

import argparse
from pathlib import Path

from twice.model import Embedder
from twice.model.whiten import DEFAULT_IMAGES, whiten_checkpoint

from .commands import help_for
from .train import add_source_arguments, sources_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "whiten",
        help=help_for("whiten"),
        description="Embed training images with the current model (--checkpoint, else the shipped"
        " one), fit a PCA whitening of the embedding on them and write the model with it to --out."
        " The bench's images are never used. Run it after `twice train`; then `twice reindex`.",
    )
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help="images to fit on, 0: all found (default %(default)s)",
    )
    add_source_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default %(default)s)")
    p.set_defaults(func=run_whiten)


def run_whiten(args: argparse.Namespace, options) -> int:
    if args.images < 0:
        raise ValueError(f"--images must be >= 0, not {args.images}")
    sources = sources_from_args(args)
    embedder = Embedder.from_options(options)
    cache_dir = options.models_dir / "whiten-data"
    record = whiten_checkpoint(embedder, sources, args.out, args.images, cache_dir, progress=not args.quiet)
    print(
        f"whitening of {embedder.version} fitted on {record['images']} images; wrote {args.out}"
        f" (load it with --checkpoint {args.out}; an index built before needs `twice reindex`)"
    )
    return 0
