"""``twice crawl``: listing pages (or a Pixabay search) in, catalog rows out; then optionally
augment and reindex, the original system's whole flow in one command."""

from __future__ import annotations

import json
import logging

from twice.crawler.crawl import CrawlConfig, CrawlSummary, crawl, open_indexer
from twice.crawler.fetcher import FetchConfig
from twice.crawler.listings import HtmlListing, pixabay_listing
from twice.crawler.records import CrawlLog, get_crawl, list_crawls
from twice.crawler.safety import AddressPolicy

from .commands import help_for
from .formatting import PreformattedEpilog

LOG = logging.getLogger(__name__)

EPILOG = """\
examples:
  twice crawl https://example.org/gallery/ --pages 3 --same-host
  twice crawl https://example.org/search?q=cat --page-param page --pages 5 --limit 200
  twice crawl --pixabay "cat" --pages 3 --augment --index
  twice crawl --list

Pixabay: with PIXABAY_API_KEY set, the official JSON API is used; otherwise the search
pages. PIXABAY_SITE_URL and PIXABAY_API_URL change the base URLs.
Safety: only http/https; hosts that resolve to private, loopback or link-local addresses are
refused unless --allow-private (or --allow-net CIDR); cloud metadata addresses always are.
robots.txt is obeyed. Re-running the same crawl resumes it (--fresh starts over)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "crawl",
        help=help_for("crawl"),
        description="Fetch listing pages, collect their images (src, srcset, lazy-load attributes),"
        " download each one with a byte cap, decode it safely and store it once by sha256. New"
        " images are pending until `twice reindex` (or --index) embeds them.",
        epilog=EPILOG,
        formatter_class=PreformattedEpilog,
    )
    p.add_argument("url", nargs="?", metavar="URL", help="the first listing page")
    p.add_argument("--pixabay", metavar="TERM", help="crawl Pixabay's results for TERM instead of a URL")
    p.add_argument("--pages", type=int, default=1, help="listing pages to read (default 1)")
    p.add_argument("--limit", type=int, help="stop after this many new images are stored")
    p.add_argument(
        "--delay", type=float, default=1.0, help="seconds between requests to one host (default 1)"
    )
    p.add_argument("--same-host", action="store_true", help="only pages and images on the URL's host")
    p.add_argument("--include", metavar="REGEX", help="only image URLs matching REGEX")
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--page-param", metavar="NAME", help="page N is URL?NAME=N (default: follow rel=next)")
    pages.add_argument("--page-url", metavar="TEMPLATE", help="page N is TEMPLATE with {page} replaced by N")
    p.add_argument("--allow-private", action="store_true", help="allow private/loopback/link-local hosts")
    p.add_argument(
        "--allow-net", action="append", metavar="CIDR", help="allow this private network only (repeatable)"
    )
    p.add_argument("--timeout", type=float, default=20.0, help="connect/read timeout in seconds (default 20)")
    p.add_argument("--retries", type=int, default=3, help="retries on 429/5xx/network errors (default 3)")
    p.add_argument(
        "--backoff", type=float, default=1.0, help="first retry wait in seconds, doubling (default 1)"
    )
    p.add_argument(
        "--max-retry-after", type=float, default=120.0, help="give up on a URL whose Retry-After is longer"
    )
    p.add_argument("--max-redirects", type=int, default=5, help="redirect hops per URL (default 5)")
    p.add_argument(
        "--max-bytes", type=int, help="largest image download (default: the max_image_bytes option)"
    )
    p.add_argument("--min-side", type=int, default=16, help="refuse images smaller than this (default 16 px)")
    p.add_argument("--user-agent", help="User-Agent header (default names twice-crawler)")
    p.add_argument("--fresh", action="store_true", help="start a new crawl record instead of resuming")
    p.add_argument("--augment", action="store_true", help="then write variants of the crawled images")
    p.add_argument("--transforms", help="with --augment: transform specs (default rotate,mirror,bright,dark)")
    p.add_argument("--index", action="store_true", help="then embed every pending catalog image (reindex)")
    p.add_argument("--list", action="store_true", help="list recent crawls and exit")
    p.add_argument(
        "--refused", type=int, metavar="ID", help="list crawl ID's refused and failed URLs and exit"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_crawl)


def build_listing(args):
    if bool(args.url) == bool(args.pixabay):
        raise ValueError("give a URL or --pixabay TERM (one of them)")
    if args.pixabay:
        if args.page_param or args.page_url:
            raise ValueError("--page-param/--page-url do not apply to --pixabay")
        return pixabay_listing(args.pixabay)
    return HtmlListing(args.url, page_param=args.page_param, page_template=args.page_url)


def build_config(args, options) -> CrawlConfig:
    fetch = FetchConfig(
        delay=args.delay,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        max_retry_after=args.max_retry_after,
        max_redirects=args.max_redirects,
        max_image_bytes=args.max_bytes or options.max_image_bytes,
        policy=AddressPolicy.from_strings(args.allow_private, args.allow_net),
        **({"user_agent": args.user_agent} if args.user_agent else {}),
    )
    return CrawlConfig(
        pages=args.pages,
        limit=args.limit,
        same_host=args.same_host,
        include=args.include,
        fresh=args.fresh,
        min_side=args.min_side,
        fetch=fetch,
    )


def run_crawl(args, options) -> int:
    if args.list:
        return print_crawls(options, args.json)
    if args.refused is not None:
        return print_refused(options, args.refused, args.json)
    if args.transforms and not args.augment:
        raise ValueError("--transforms is only used with --augment")
    listing = build_listing(args)
    config = build_config(args, options)
    summary = crawl(options, listing, config, progress=not args.quiet)
    report: dict = {"crawl": summary.to_dict()}
    _print(args, summary.lines())
    if args.augment:
        report["augment"] = run_augment_step(options, summary, args)
    if args.index:
        report["index"] = run_index_step(options, args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0 if summary.pages or summary.pages_skipped else 1


def run_augment_step(options, summary: CrawlSummary, args) -> dict:
    """Variants of every image this crawl stored or met (idempotent: missing pairs only)."""
    try:
        from twice.augment import ORIGINAL_FOUR, augment_catalog
    except ImportError as exc:
        raise RuntimeError(f"--augment needs the augment package ({exc})") from None
    indexer = open_indexer(options)
    try:
        ids = CrawlLog(indexer.catalog, summary.crawl_id).image_ids()
        specs = args.transforms or ",".join(ORIGINAL_FOUR)
        result = augment_catalog(indexer, specs, ids=ids, progress=not args.quiet)
    finally:
        indexer.close()
    _print(args, ["augment: " + line for line in result.lines()])
    return result.to_dict()


def run_index_step(options, args) -> dict:
    from twice.indexer import reindex
    from twice.model import Embedder

    result = reindex([], options, Embedder.from_options(options), progress=not args.quiet)
    _print(args, ["index: " + line for line in result.lines()])
    return result.to_dict()


def print_crawls(options, as_json: bool) -> int:
    from twice.indexer import Catalog

    catalog = Catalog(options.catalog_url)
    try:
        records = [r.to_dict() for r in list_crawls(catalog)]
    finally:
        catalog.close()
    if as_json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no crawls yet")
    for r in records:
        source = r["listing"].get("term") or r["listing"].get("url")
        refused = sum(r["refused"].values())
        print(
            f"#{r['id']:<4} {r['status']:<11} runs {r['runs']}  pages {r['pages']}  found {r['found']}"
            f"  stored {r['downloaded']}  dup {r['duplicates']}  refused {refused}  {source}"
        )
    return 0


def print_refused(options, crawl_id: int, as_json: bool) -> int:
    from twice.indexer import Catalog

    catalog = Catalog(options.catalog_url)
    try:
        if get_crawl(catalog, crawl_id) is None:
            raise ValueError(f"no crawl #{crawl_id} (see `twice crawl --list`)")
        rows = [
            {"kind": r.kind, "url": r.url, "state": r.state, "reason": r.reason, "detail": r.detail}
            for r in CrawlLog(catalog, crawl_id).problems()
        ]
    finally:
        catalog.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"crawl #{crawl_id}: nothing refused")
    for r in rows:
        print(f"{r['reason']:<20} {r['state']:<8} {r['kind']:<5} {r['url']}  {r['detail'] or ''}".rstrip())
    return 0


def _print(args, lines: list[str]) -> None:
    if not args.json:
        print("\n".join(lines))
