"""``twice calibrate``: fit the verdict thresholds on the catalog's known variant pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from twice.search.calibrate import (
    DEFAULT_K,
    DEFAULT_PAIRS,
    DEFAULT_PRECISION,
    DEFAULT_RANDOM,
    DEFAULT_SIMILAR_PRECISION,
    calibrate,
)

from .commands import help_for


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help=help_for("calibrate"),
        description="Score the catalog's known variant pairs (rows made by `twice augment`) and"
        " non-pairs (the other images search shows next to them, plus random ones) by CNN"
        " cosine and perceptual-hash distance, and verify them by local features as search"
        " does; fit 'hash <= h or CNN >= t' for the duplicate verdict at the target precision"
        " and for the similar verdict at a lower one; store them with the model version and"
        " write the precision/recall curves as a PNG.",
    )
    p.add_argument("--precision", type=float, default=DEFAULT_PRECISION, help="duplicate target (0.99)")
    p.add_argument(
        "--similar-precision", type=float, default=DEFAULT_SIMILAR_PRECISION, help="similar target (0.90)"
    )
    p.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="variant pairs sampled (3000)")
    p.add_argument("-k", type=int, default=DEFAULT_K, help="hard negatives per query and signal (10)")
    p.add_argument("--random", type=int, default=DEFAULT_RANDOM, help="random negatives per query (5)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--plot", metavar="PNG", help="where to write the curves (default DATA_DIR/reports/)")
    p.add_argument("--dry-run", action="store_true", help="fit and report, but do not store")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="fit on CNN score and hash alone, without verifying the pairs by local features as"
        " search does (faster, but look-alikes search would demote then raise the CNN cut)",
    )
    p.add_argument("--json", action="store_true", help="print the details as JSON")
    p.add_argument(
        "--export-shipped",
        metavar="CHECKPOINT",
        help="also write a copy of the model's checkpoint with the fitted thresholds in it, the"
        " ones a fresh data directory then uses (fit on images the model never trained on)",
    )
    p.set_defaults(func=run_calibrate)


def run_calibrate(args, options) -> int:
    from twice.model.weights import checkpoint_in_use, read_shipped_thresholds, write_shipped_thresholds

    checkpoint = checkpoint_in_use(options)
    if args.export_shipped and checkpoint is None:
        raise SystemExit("--export-shipped needs a twice checkpoint: pass --checkpoint PATH")
    result = calibrate(
        options,
        precision=args.precision,
        similar_precision=args.similar_precision,
        pairs=args.pairs,
        k=args.k,
        randoms=args.random,
        seed=args.seed,
        plot=Path(args.plot) if args.plot else None,
        store=not args.dry_run,
        progress=not args.quiet,
        shipped=read_shipped_thresholds(checkpoint) if checkpoint else None,
        verify=args.verify,
    )
    if args.export_shipped:
        written = write_shipped_thresholds(
            checkpoint, args.export_shipped, result.fit.thresholds().to_shipped()
        )
        print(f"shipped thresholds written into {written} (a copy of {checkpoint})", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": result.model_version, **result.details()}, indent=2))
    else:
        print("\n".join(result.lines()))
    return 0
