"""``twice bench setup | quality | speed | report`` (or ``python -m bench ...``): the figures the README
quotes, from one command. bench/ lives in the checkout and is not installed with twice."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from twice.augment.families import FAMILIES, HELD_OUT_FAMILIES
from twice.augment.sources import APT_SOURCES, ensure_apt_sources
from twice.options import Options
from twice.search.pairs import METHODS

from .index import IndexBenchConfig, run_index_bench
from .quality import QualityConfig, run_quality
from .report import INDEX_KINDS, ReportConfig, all_found, bench_row, run_report_bench
from .report_quality import ReportQualityConfig, run_report_quality
from .results import RESULTS_DIR, command_line, write_results
from .sources import CLIPART_SOURCES, COMBO_SIZES, PHOTO_SOURCES
from .speed import SpeedConfig, run_speed

LOG = logging.getLogger(__name__)

QUICK_IMAGE_SIZE = 64  # --quick: the real code paths at a size two cores run in seconds


DESCRIPTION = (
    "Reproducible figures: `bench quality` (recall per transform, duplicate"
    " precision/recall, against a random-init VGG-16 and imagededup's PHash) and `bench speed`"
    " (model, reindex, query latency, FAISS), `bench report` (the duplicate report on synthetic"
    " collections of 10k to 1M vectors). --quick is a smoke test sized for CI."
)


def main(argv: Sequence[str] | None = None, options: Options | None = None) -> int:
    """``python -m bench KIND ...`` from a checkout; ``twice bench KIND ...`` forwards here."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO)
    try:
        return int(args.func(args, options or Options.from_env()) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"twice bench {args.bench_command}: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twice bench", description=DESCRIPTION)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    sub = p.add_subparsers(dest="bench_command", metavar="KIND", required=True)

    s = sub.add_parser(
        "setup", help="install the Debian image sources (apt-get, as root) and check the extras"
    )
    s.set_defaults(func=run_setup)

    q = sub.add_parser(
        "quality",
        help="recall@k per edit family (with 95% CIs) and duplicate precision/recall, side by side",
        description="Index photo-like originals among clip-art distractors through the product's own"
        " path, then search one edited copy of every original per edit row (each copy's parameters"
        " drawn anew from its family's ranges with the seed) and never-indexed clip-art negatives."
        f" Held-out families ({', '.join(HELD_OUT_FAMILIES)}) are never drawn by training and get"
        " their own table. Out of the box: no calibration, as a new user runs it.",
    )
    _common(q)
    q.add_argument("--originals", type=int, help="indexed originals whose copies are queried (default 100)")
    q.add_argument("--distractors", type=int, help="indexed images never queried (default 330)")
    q.add_argument("--negatives", type=int, help="never-indexed query images (default 120)")
    q.add_argument(
        "--original-sources",
        help=f"comma-separated sources of the originals (default {','.join(PHOTO_SOURCES)})",
    )
    q.add_argument(
        "--distractor-sources",
        help="comma-separated sources of the distractors and negatives"
        f" (default {','.join(CLIPART_SOURCES)})",
    )
    q.add_argument(
        "--families",
        help=f"comma-separated edit families, or 'none' (default all: {','.join(FAMILIES)};"
        " none when --transforms is given)",
    )
    q.add_argument(
        "--combos",
        help="comma-separated sizes of combination rows (k seen families at once), or 'none'"
        f" (default {','.join(map(str, COMBO_SIZES))}; none when --transforms is given)",
    )
    q.add_argument(
        "--transforms",
        help="comma-separated fixed transform specs, each its own row (the same edit for every original)",
    )
    q.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="also evaluate this checkpoint (repeatable)",
    )
    q.add_argument(
        "--search-variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also run the current model with these search_file() options (repeatable)",
    )
    q.add_argument(
        "--calibrate",
        action="store_true",
        help="first fit the thresholds as `twice calibrate` does, on one draw of each seen family"
        " of the distractors (default: the shipped thresholds, as out of the box)",
    )
    q.add_argument(
        "--calibration-images",
        type=int,
        help="with --calibrate: distractors given variants (default all)",
    )
    q.add_argument("--no-random-init", action="store_true", help="skip the random-init VGG-16")
    q.add_argument(
        "--cnn-only",
        action="store_true",
        help="of the current model, only the CNN column (the whole search embeds 8 views a query)",
    )
    q.add_argument("--no-phash", action="store_true", help="skip imagededup's PHash")
    q.add_argument("--no-install", action="store_true", help="never apt-get missing Debian sources")
    q.add_argument("--seed", type=int, default=0, help="seed of every choice in the set (default 0)")
    q.set_defaults(func=run_quality_command)

    sp = sub.add_parser("speed", help="forward rate, reindex throughput, query latency, FAISS speed/recall")
    _common(sp)
    sp.add_argument(
        "--parts",
        help="comma-separated subset of forward,reindex,rerun,upload,query,faiss"
        " (default forward,reindex,query,faiss)",
    )
    sp.add_argument("--faiss-sizes", help="comma-separated vector counts (default 10000,100000,1000000)")
    sp.add_argument("--nprobe", help="comma-separated IVF nprobe values (default 1,4,16,64,256)")
    sp.add_argument(
        "--faiss-data", choices=["clustered", "uniform"], help="synthetic vectors (default clustered)"
    )
    sp.add_argument(
        "--bf16",
        choices=["auto", "always", "never"],
        default="auto",
        help="bf16 autocast rows: auto = only on CPUs with fast bf16 (default)",
    )
    sp.add_argument("--batch-sizes", help="comma-separated forward batch sizes (default 1,32)")
    sp.add_argument("--repeat", type=int, help="timed forward passes per setting (default 2)")
    sp.add_argument("--queries", type=int, help="latency queries per path (default 20)")
    sp.add_argument("--reindex-images", type=int, help="JPEG files to reindex (default 64)")
    sp.add_argument("--rerun-files", type=int, help="tiny files for the unchanged re-run (default 100000)")
    sp.add_argument(
        "--upload-sizes", help="comma-separated index sizes for POST /images (default 1000,100000)"
    )
    sp.add_argument("--uploads", type=int, help="timed uploads per index size (default 20)")
    sp.add_argument("--no-http", action="store_true", help="skip the `twice serve` latency")
    sp.add_argument(
        "--no-cli-process", action="store_true", help="skip timing a whole `twice search` process"
    )
    sp.set_defaults(func=run_speed_command)

    ix = sub.add_parser(
        "index",
        help="the large-collection index (IVF-SQ8): bytes per vector, recall@10, top-10 latency",
    )
    _common(ix)
    ix.add_argument("--sizes", help="comma-separated vector counts (default 1000000; --quick 20000)")
    ix.add_argument("--kinds", help="comma-separated sq8,ivf (default sq8)")
    ix.add_argument("--nprobe", help="comma-separated nprobe values (default 16,32,64,128)")
    ix.add_argument("--queries", type=int, help="queries (default 1000)")
    ix.set_defaults(func=run_index_command)

    r = sub.add_parser(
        "report",
        help="the duplicate report at scale: full and incremental runs on synthetic vectors",
        description="Time `twice report` (its CNN side) on synthetic collections: random unit vectors"
        " with 1 % planted near-duplicate groups in a real catalog and index; a full report, 1 %"
        " more vectors, an incremental report; peak memory per stage; whether the planted groups"
        " were found. Exits 1 when a run misses a planted group.",
    )
    r.add_argument(
        "--sizes", required=True, metavar="N[,N...]", help="vector counts, at least 100 (e.g. 10000,100000)"
    )
    r.add_argument(
        "--index",
        default=",".join(INDEX_KINDS),
        metavar="KINDS",
        help=f"comma-separated index kinds (default {','.join(INDEX_KINDS)})",
    )
    r.add_argument("--dim", type=int, default=256, help="vector dimension (default 256)")
    r.add_argument(
        "--method", choices=METHODS, default="knn", help="pair search: k-NN with a cut-off (default) or range"
    )
    r.add_argument("--nprobe", type=int, help="IVF lists searched per vector (default: the index's)")
    r.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"where results go (default {RESULTS_DIR})"
    )
    r.add_argument(
        "--work-dir",
        type=Path,
        help="build the collections in a temporary folder here (default: the data directory)",
    )
    r.add_argument("--tag", help="name this run's results report-TAG, so they do not replace report.md")
    r.set_defaults(func=run_report_command)

    rq = sub.add_parser(
        "report-quality",
        help="`twice report` on a folder of edited copies and unrelated images: pair precision,"
        " pair recall, families whole",
        description="Write a folder of photo-like originals, each with edited copies drawn from every"
        " edit family (held-out ones and combinations included), among unrelated clip-art drawings"
        " and other photo-like images; add it as `twice reindex FOLDER` does and build the report as"
        " `twice report` does, with the shipped model and thresholds (no calibrate); score the"
        " groups against the true families and list the wrong groups and missed copies.",
    )
    rq.add_argument("--originals", type=int, help="originals with copies (default 20)")
    rq.add_argument("--copies", type=int, help="edited copies of each original (default 12)")
    rq.add_argument("--drawings", type=int, help="unrelated clip-art drawings (default 300)")
    rq.add_argument("--others", type=int, help="other unrelated photo-like images (default 60)")
    rq.add_argument("--linkage", help="how duplicate pairs make groups (default: the report's)")
    rq.add_argument("--seed", type=int, default=0, help="seed of every choice in the folder (default 0)")
    rq.add_argument("--no-install", action="store_true", help="never apt-get missing Debian sources")
    rq.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"where results go (default {RESULTS_DIR})"
    )
    rq.add_argument(
        "--work-dir", type=Path, help="keep the folder and data directory here (default: a temporary folder)"
    )
    rq.add_argument(
        "--keep-data",
        action="store_true",
        help="with --work-dir: reuse the data directory it holds (only the report is run again)",
    )
    rq.add_argument("--tag", help="name this run's results report-quality-TAG")
    rq.set_defaults(func=run_report_quality_command)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test sizes, {QUICK_IMAGE_SIZE} px input, minutes on 2 cores",
    )
    p.add_argument(
        "--image-size", type=int, help="model input size (default: the configured one; --quick: 64)"
    )
    p.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"where results go (default {RESULTS_DIR})"
    )
    p.add_argument(
        "--work-dir", type=Path, help="keep the benchmark's files here (default: a temporary folder)"
    )
    p.add_argument("--tag", help="name this run's results KIND-TAG, so they do not replace the main KIND.md")


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def _ints(name: str, text: str | None) -> tuple[int, ...] | None:
    items = _csv(text)
    if items is None:
        return None
    try:
        values = tuple(int(t.replace("_", "")) for t in items)
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{name} values must be at least 1, got {text!r}")
    return values


def parse_variant(text: str) -> dict:
    """``tta=d4,phash=on`` -> {"tta": "d4", "phash": "on"}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ValueError(f"--search-variant takes KEY=VALUE[,KEY=VALUE], got {text!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def _bench_options(args, options):
    size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else None)
    if size is not None and size < 32:
        raise ValueError(f"--image-size must be at least 32, got {size}")
    return options.with_overrides(image_size=size)


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _kind(args) -> str:
    """quality / speed for the full run; a subset of parts, --tag and --quick each get their own
    name so they never replace the figures the README quotes."""
    words = [args.bench_command]
    parts = _csv(getattr(args, "parts", None))
    if parts and set(parts) != {"forward", "reindex", "query", "faiss"}:
        words.append("+".join(parts))
    if args.tag:
        if not all(c.isalnum() or c in "-_." for c in args.tag):
            raise ValueError(f"--tag may hold letters, digits, '-', '_' and '.', got {args.tag!r}")
        words.append(args.tag)
    if getattr(args, "quick", False):
        words.append("quick")
    return "-".join(words)


def run_setup(args, options) -> int:
    notes = ensure_apt_sources(tuple(APT_SOURCES), install=True)
    for name, note in notes.items():
        print(f"{name} ({APT_SOURCES[name][0]}): {note}")
    for module, what in (
        ("skimage", "scikit-image"),
        ("matplotlib", "matplotlib"),
        ("imagededup", "imagededup"),
    ):
        try:
            __import__(module)
            print(f"{what}: installed")
        except ImportError:
            print(f"{what}: missing; pip install -e '.[bench]'")
    return 0


def _none_or_csv(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated list; 'none' is the empty list."""
    return () if text is not None and text.strip().lower() == "none" else _csv(text)


def _edit_values(args) -> dict:
    """--families / --combos / --transforms: fixed transforms alone replace the drawn rows."""
    transforms = _csv(args.transforms) or ()
    families = _none_or_csv(args.families)
    combos = _none_or_csv(args.combos)
    if transforms:
        families = () if families is None else families
        combos = () if combos is None else combos
    values = {"transforms": transforms, "families": families}
    if combos is not None:
        try:
            values["combos"] = tuple(int(k) for k in combos)
        except ValueError:
            raise ValueError(f"--combos takes comma-separated sizes or 'none', got {args.combos!r}") from None
    return values


def run_quality_command(args, options) -> int:
    options = _bench_options(args, options)
    values = _given(
        originals=args.originals,
        distractors=args.distractors,
        negatives=args.negatives,
        original_sources=_csv(args.original_sources),
        distractor_sources=_csv(args.distractor_sources),
        work_dir=args.work_dir,
        calibration_images=args.calibration_images,
    )
    if values.get("calibration_images", 1) < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if args.calibration_images is not None and not args.calibrate:
        raise ValueError("--calibration-images needs --calibrate")
    values.update(_edit_values(args))
    values.update(
        calibrate=args.calibrate,
        seed=args.seed,
        checkpoints=tuple(args.model),
        search_variants=tuple(parse_variant(v) for v in args.search_variant),
        random_init=not args.no_random_init,
        search=not args.cnn_only,
        phash=not args.no_phash,
        progress=not args.quiet,
    )
    if args.no_install:
        values["install"] = False
    config = QualityConfig.quick_config(**values) if args.quick else QualityConfig(**values)
    kind = _kind(args)
    payload, markdown = run_quality(
        config, options, command_line(), plot_path=args.results_dir / f"{kind}.png"
    )
    json_path, md_path = write_results(kind, payload, markdown, args.results_dir)
    print(markdown)
    print(f"\nresults: {json_path}, {md_path}")
    return 0


def run_speed_command(args, options) -> int:
    options = _bench_options(args, options)
    values = _given(
        parts=_csv(args.parts),
        faiss_sizes=_ints("faiss-sizes", args.faiss_sizes),
        nprobes=_ints("nprobe", args.nprobe),
        batch_sizes=_ints("batch-sizes", args.batch_sizes),
        faiss_data=args.faiss_data,
        repeat=args.repeat,
        queries=args.queries,
        reindex_images=args.reindex_images,
        rerun_files=args.rerun_files,
        upload_sizes=_ints("upload-sizes", args.upload_sizes),
        uploads=args.uploads,
        work_dir=args.work_dir,
    )
    values.update(
        bf16=args.bf16, http=not args.no_http, cli_process=not args.no_cli_process, progress=not args.quiet
    )
    for name in ("repeat", "queries", "reindex_images", "rerun_files", "uploads"):
        if name in values and values[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {values[name]}")
    config = SpeedConfig.quick_config(**values) if args.quick else SpeedConfig(**values)
    kind = _kind(args)
    payload, markdown = run_speed(config, options, command_line())
    json_path, md_path = write_results(kind, payload, markdown, args.results_dir)
    print(markdown)
    print(f"\nresults: {json_path}, {md_path}")
    return 0


def run_index_command(args, options) -> int:
    values = _given(
        sizes=_ints("sizes", args.sizes),
        kinds=_csv(args.kinds),
        nprobes=_ints("nprobe", args.nprobe),
        queries=args.queries,
    )
    if args.quick:
        values = {"sizes": (20_000,), "queries": 100, **values}
    payload, markdown = run_index_bench(IndexBenchConfig(**values), command_line())
    json_path, md_path = write_results(_kind(args), payload, markdown, args.results_dir)
    print(markdown)
    print(f"\nresults: {json_path}, {md_path}")
    return 0


def run_report_command(args, options) -> int:
    config = ReportConfig(
        sizes=_ints("sizes", args.sizes) or (),
        indexes=_csv(args.index) or (),
        dim=args.dim,
        method=args.method,
        nprobe=args.nprobe,
        work_dir=args.work_dir or Path(options.data_dir),
    )
    kind = _kind(args)  # a bad --tag fails now, not after the runs

    def show(result: dict) -> None:
        print(bench_row(result), flush=True)

    payload, markdown = run_report_bench(config, command_line(), on_run=show)
    json_path, md_path = write_results(kind, payload, markdown, args.results_dir)
    print(markdown)
    print(f"\nresults: {json_path}, {md_path}")
    return 0 if all_found(payload) else 1


def run_report_quality_command(args, options) -> int:
    values = _given(
        originals=args.originals,
        copies=args.copies,
        drawings=args.drawings,
        others=args.others,
        linkage=args.linkage,
        work_dir=args.work_dir,
    )
    if args.keep_data and args.work_dir is None:
        raise ValueError("--keep-data needs --work-dir")
    config = ReportQualityConfig(
        **values,
        seed=args.seed,
        install=not args.no_install,
        keep_data=args.keep_data,
        progress=not args.quiet,
    )
    config.check()
    kind = _kind(args)  # a bad --tag fails now, not after the run
    payload, markdown = run_report_quality(config, options, command_line())
    json_path, md_path = write_results(kind, payload, markdown, args.results_dir)
    print(markdown)
    print(f"\nresults: {json_path}, {md_path}")
    return 0
