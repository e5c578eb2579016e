"""``twice augment``: write variants of catalogued originals, or preview them as a contact sheet."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from twice.augment.preview import contact_sheet
from twice.augment.transforms import ORIGINAL_FOUR, TRANSFORMS, parse_transforms
from twice.augment.variants import DEFAULT_MAX_SIDE, augment_catalog
from twice.imageio import load_image
from twice.indexer import Indexer, VectorIndex

from .commands import help_for
from .formatting import PreformattedEpilog

LOG = logging.getLogger(__name__)

# Augment only writes catalog rows, never vectors; when no index exists yet the Indexer
# still needs a model version and dimension, so it gets these placeholders (never saved).
NO_INDEX_VERSION, NO_INDEX_DIM = "augment-no-index", 1


def register(subparsers) -> None:
    names = "\n".join(f"  {t.usage():<24} {t.describe()}" for t in TRANSFORMS.values())
    p = subparsers.add_parser(
        "augment",
        help=help_for("augment"),
        description="For every catalogued original, store one variant per transform as a new"
        " catalog row linked to it (parent id, transform spec). Idempotent: pairs already in the"
        " catalog are skipped. Variants are embedded by the next `twice reindex`. With --preview,"
        " nothing is stored: a labelled contact sheet of one image and its variants is written.",
        epilog="transforms (spec = name[:param[:param]], comma-separated, or 'all'; specs joined by +\n"
        "are one variant, their steps applied in order, e.g. tilt:10:black+cropbox:0.6:1:0.5:0.5):\n" + names,
        formatter_class=PreformattedEpilog,
    )
    p.add_argument(
        "--transforms",
        help="comma-separated specs, e.g. rotate,rotate:180,jpeg:30; specs joined by + store several"
        " edits, applied in order, as one variant, e.g. tilt:10:black+jpeg:30"
        f" (default {','.join(ORIGINAL_FOUR)}; with --preview: all)",
    )
    p.add_argument("--only-new", action="store_true", help="skip originals that already have any variant")
    p.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help=f"bound the longer side of an original before transforming (default {DEFAULT_MAX_SIDE})",
    )
    p.add_argument("--preview", metavar="IMAGE", help="write a contact sheet of IMAGE and its variants")
    p.add_argument("-o", "--output", metavar="PNG", help="contact sheet file (default IMAGE-variants.png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_augment)


def run_augment(args, options) -> int:
    if args.preview:
        return run_preview(args, options)
    if args.output:
        raise ValueError("-o/--output is only used with --preview IMAGE")
    specs = parse_transforms(args.transforms or ",".join(ORIGINAL_FOUR))  # refuse bad specs before opening
    version, dim = _index_identity(options)
    indexer = Indexer(options, version, dim)
    try:
        summary = augment_catalog(
            indexer, specs, only_new=args.only_new, max_side=args.max_side, progress=not args.quiet
        )
    finally:
        indexer.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0


def run_preview(args, options) -> int:
    specs = parse_transforms(args.transforms or "all")
    decoded = load_image(args.preview, options.max_image_bytes, options.max_image_pixels)
    output = Path(args.output) if args.output else Path(f"{Path(args.preview).stem}-variants.png")
    sheet = contact_sheet(decoded.image, specs)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output, format="PNG")
    print(f"wrote {output} ({len(specs)} variants of {args.preview}, {sheet.width}x{sheet.height})")
    return 0


def _index_identity(options) -> tuple[str, int]:
    """The saved index's model version and dimension, so opening the Indexer neither warns
    about a model change nor plans a rebuild; placeholders when there is no index yet."""
    if options.index_path.exists():
        header = VectorIndex.read_header(options.index_path)
        return header["model_version"], int(header["dim"])
    return NO_INDEX_VERSION, NO_INDEX_DIM
