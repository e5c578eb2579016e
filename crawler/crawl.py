"""The crawl loop: listing pages -> image URLs -> checked downloads -> catalog rows.

Images are decoded (with the decompression-bomb guard) before anything is stored, stored by
sha256 through the ``Indexer`` (the same bytes once), and left *pending*: the next
``twice reindex`` embeds them. Every page and image is recorded as it finishes, so a killed
crawl resumes where it stopped.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tqdm import tqdm

from twice.imageio import ImageError, sha256_bytes
from twice.indexer import Indexer
from twice.indexer.schema import utcnow

from .fetcher import FetchConfig, Fetched, Fetcher
from .listings import Listing
from .parse import ImageLink
from .records import DONE, DUPLICATE, FAILED, PARTIAL, REFUSED, STORED, CrawlLog
from .safety import Refused

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrawlConfig:
    """What to crawl and how much; ``fetch`` says how politely."""

    pages: int = 1
    limit: int | None = None  # stop after this many new images stored
    same_host: bool = False  # pages and images only from the listing's host
    include: str | None = None  # regex an image URL must match (re.search)
    fresh: bool = False  # a new crawl record instead of resuming the last one
    min_side: int = 16  # smaller decoded images are icons or spacers
    fetch: FetchConfig = field(default_factory=FetchConfig)

    def __post_init__(self) -> None:
        if self.pages < 1:
            raise ValueError(f"pages must be >= 1, got {self.pages}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.include is not None:
            try:
                re.compile(self.include)
            except re.error as exc:
                raise ValueError(f"include pattern {self.include!r} is not a regex: {exc}") from None


@dataclass
class CrawlSummary:
    """What one run of a crawl did (``totals``: all runs of the same crawl)."""

    crawl_id: int = 0
    resumed: bool = False
    pages: int = 0  # listing pages fetched and read this run
    pages_skipped: int = 0  # done in an earlier run
    found: int = 0  # image URLs seen on those pages
    downloaded: int = 0  # new images stored
    duplicates: int = 0  # bytes already in the catalog
    skipped_done: int = 0  # image URLs done in an earlier run
    placeholders: int = 0  # lazy-load blanks, data: URIs, 1x1 pixels (never downloaded)
    filtered: int = 0  # not matching --include
    refused: Counter = field(default_factory=Counter)  # reason -> count, final
    failed: Counter = field(default_factory=Counter)  # reason -> count, retried next run
    new_ids: list[int] = field(default_factory=list)
    stopped: str = ""
    requests: int = 0
    seconds: float = 0.0
    totals: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.__dict__, "refused": dict(self.refused), "failed": dict(self.failed)}

    def lines(self) -> list[str]:
        lines = [
            f"crawl #{self.crawl_id}" + (" (resumed)" if self.resumed else "") + f": {self.stopped}",
            f"pages: {self.pages} read"
            + (f", {self.pages_skipped} done before" if self.pages_skipped else ""),
            f"images: {self.found} found, {self.downloaded} stored, {self.duplicates} duplicates"
            + (f", {self.skipped_done} done before" if self.skipped_done else ""),
            f"dropped: {self.placeholders} placeholders, {self.filtered} not matching --include",
            f"refused: {_counts(self.refused)}",
        ]
        if self.failed:
            lines.append(f"failed (tried again next run): {_counts(self.failed)}")
        lines.append(f"{self.requests} requests in {self.seconds:.1f}s")
        return lines


def _counts(counter: Counter) -> str:
    total = sum(counter.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{n} {reason}" for reason, n in counter.most_common()) + ")"


def open_indexer(options) -> Indexer:
    """An ``Indexer`` for adding catalog rows only: the crawler never touches vectors, and
    the Indexer loads the vector index lazily, so the model version given here is unused."""
    return Indexer(options, "catalog-only", options.embed_dim)


class Crawler:
    """One run of one crawl over a listing."""

    def __init__(
        self,
        options,
        listing: Listing,
        config: CrawlConfig | None = None,
        fetcher: Fetcher | None = None,
        progress: bool = False,
    ) -> None:
        self.options = options
        self.listing = listing
        self.config = config or CrawlConfig()
        self.fetcher = fetcher or Fetcher(self.config.fetch)
        self.progress = progress
        self.include = re.compile(self.config.include) if self.config.include else None
        self.host = urlsplit(listing.first_url()).hostname
        self.summary = CrawlSummary()
        self._bar: tqdm | None = None

    def run(self) -> CrawlSummary:
        """Crawl up to ``pages`` listing pages; returns this run's summary."""
        started = time.monotonic()
        indexer = open_indexer(self.options)
        self.indexer = indexer
        status = "interrupted"
        try:
            self.log, self.summary.resumed = CrawlLog.open(
                indexer.catalog, self.listing.identity(), self.config.fresh
            )
            self.summary.crawl_id = self.log.crawl_id
            self._bar = tqdm(desc=f"crawl #{self.log.crawl_id}", unit="img", disable=not self.progress)
            self._pages()
            status = "finished"
        except Exception:
            status = "failed"  # KeyboardInterrupt stays "interrupted"; both resume next run
            raise
        finally:
            self.summary.requests = self.fetcher.requests
            self.summary.seconds = time.monotonic() - started
            if getattr(self, "log", None) is not None:
                last_run = {k: v for k, v in self.summary.to_dict().items() if k not in ("new_ids", "totals")}
                record = self.log.finish(status, last_run)
                self.summary.totals = record.to_dict()
            if self._bar is not None:
                self._bar.close()
            indexer.close()
        return self.summary

    # pages --------------------------------------------------------------------------------

    def _pages(self) -> None:
        url: str | None = self.listing.first_url()
        for number in range(1, self.config.pages + 1):
            url = self._page(url, number)
            if self.summary.stopped:
                return
            if url is None and number < self.config.pages:
                self.summary.stopped = f"no page after page {number}"
                return
        self.summary.stopped = f"{self.config.pages} page{'s' if self.config.pages > 1 else ''} done"

    def _page(self, url: str, number: int) -> str | None:
        """Crawl one listing page; returns the next page's URL (or None)."""
        public = self.listing.public_url(url)
        done = self.log.get("page", public)
        if done is not None and done.state == DONE:
            self.summary.pages_skipped += 1
            return done.next_url and self._private_url(done.next_url, number + 1)
        try:
            fetched = self.fetcher.get(url, self.listing.kind, self._check, robots=self.listing.robots)
            page = self.listing.read(fetched, number)
        except Refused as exc:
            self._refuse("page", public, exc)
            LOG.warning("listing page %d refused: %s", number, exc)
            self.summary.stopped = f"page {number} not read ({exc.reason})"
            return None
        self.summary.pages += 1
        self.summary.placeholders += page.placeholders
        self.summary.found += len(page.images)
        self._bar_status(page=number)
        failed_before = sum(self.summary.failed.values())
        for link in page.images:
            if self.config.limit is not None and self.summary.downloaded >= self.config.limit:
                self.summary.stopped = f"limit of {self.config.limit} new images reached"
                return None  # this page stays not done: a resumed crawl finishes it
            self._image(link, self.listing.public_url(fetched.url))
        # a page with failed images is read again on resume, to retry them
        state = PARTIAL if sum(self.summary.failed.values()) > failed_before else DONE
        next_public = self.listing.public_url(page.next_url) if page.next_url else None
        self.log.record("page", public, state, next_url=next_public, page_number=number)
        if self.config.limit is not None and self.summary.downloaded >= self.config.limit:
            self.summary.stopped = f"limit of {self.config.limit} new images reached"
        return page.next_url

    def _private_url(self, public_next: str, number: int) -> str:
        """The fetchable URL of a recorded next page (public URLs may have secrets redacted)."""
        return self.listing.page_url(number) or public_next

    def _check(self, url: str) -> None:
        if self.config.same_host and urlsplit(url).hostname != self.host:
            raise Refused("off_host", url, f"not on {self.host} (--same-host)")

    # images -------------------------------------------------------------------------------

    def _image(self, link: ImageLink, page_url: str) -> None:
        if self.include is not None and not self.include.search(link.url):
            self.summary.filtered += 1
            return
        if self.log.is_done("image", link.url):
            self.summary.skipped_done += 1
            return
        try:
            fetched = self.fetcher.get(link.url, "image", self._check)
            row_id, created = self._store(link, fetched, page_url)
        except Refused as exc:
            self._refuse("image", link.url, exc, page_url=page_url)
        except ImageError as exc:
            self._refuse("image", link.url, Refused(exc.reason, link.url, str(exc)), page_url=page_url)
        else:
            state = STORED if created else DUPLICATE
            self.log.record("image", link.url, state, image_id=row_id, page_url=page_url)
            if created:
                self.summary.downloaded += 1
                self.summary.new_ids.append(row_id)
            else:
                self.summary.duplicates += 1
        self._bar.update(1)
        self._bar_status()

    def _store(self, link: ImageLink, fetched: Fetched, page_url: str) -> tuple[int, bool]:
        """Decode (bomb guard first), then store and catalogue; returns (image id, created)."""
        data = fetched.content
        known = self.indexer.catalog.by_sha256(sha256_bytes(data))
        if known is not None:
            return known.id, False
        decoded = self.indexer.decode(data, link.url)
        if min(decoded.width, decoded.height) < self.config.min_side:
            raise Refused("too_small", link.url, f"{decoded.width}x{decoded.height} pixels")
        meta = link.meta() | {"crawl_id": self.log.crawl_id, "crawled_at": utcnow().isoformat()}
        if fetched.url != link.url:
            meta["final_url"] = fetched.url
        with self.indexer.catalog.session() as session:
            row, created = self.indexer.add_decoded(
                session, data, decoded, link.url, page_url=link.page_url or page_url, meta=meta
            )
            return row.id, created

    def _refuse(self, kind: str, url: str, exc: Refused, **columns: object) -> None:
        state = FAILED if exc.transient else REFUSED
        (self.summary.failed if exc.transient else self.summary.refused)[exc.reason] += 1
        self.log.record(kind, url, state, reason=exc.reason, detail=exc.detail[:500], **columns)
        # per-URL detail is in the crawl records (`twice crawl --refused ID`); the log stays quiet
        LOG.debug("%s %s: %s", kind, state, exc)

    def _bar_status(self, **extra: object) -> None:
        if self._bar is not None and not self._bar.disable:
            s = self.summary
            self._bar.set_postfix(
                **extra,
                stored=s.downloaded,
                dup=s.duplicates,
                refused=sum(s.refused.values()) + sum(s.failed.values()),
            )


def crawl(
    options,
    listing: Listing,
    config: CrawlConfig | None = None,
    progress: bool = False,
) -> CrawlSummary:
    """Run (or resume) the crawl of ``listing`` into ``options``' data directory."""
    config = config or CrawlConfig()
    with Fetcher(config.fetch) as fetcher:
        return Crawler(options, listing, config, fetcher, progress).run()
