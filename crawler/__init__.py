"""A polite, safe image crawler: listing pages -> image URLs -> checked downloads -> catalog.

Usage (``options`` is a ``twice.options.Options``)::

    from twice.crawler import CrawlConfig, HtmlListing, crawl
    summary = crawl(options, HtmlListing("https://example.org/gallery/"), CrawlConfig(pages=2))
    print("\n".join(summary.lines()))
"""

from .crawl import CrawlConfig, Crawler, CrawlSummary, crawl
from .fetcher import FetchConfig, Fetched, Fetcher
from .listings import HtmlListing, Listing, PixabayApiListing, pixabay_listing
from .parse import ImageLink, ListingPage, is_placeholder, largest_candidate, parse_listing, parse_srcset
from .records import CrawlLog, CrawlRecord, CrawlUrl, list_crawls
from .robots import RobotsCache
from .safety import AddressPolicy, Refused, check_url, classify_address, redact_url

__all__ = [
    "AddressPolicy",
    "CrawlConfig",
    "CrawlLog",
    "CrawlRecord",
    "CrawlSummary",
    "CrawlUrl",
    "Crawler",
    "FetchConfig",
    "Fetched",
    "Fetcher",
    "HtmlListing",
    "ImageLink",
    "Listing",
    "ListingPage",
    "PixabayApiListing",
    "RobotsCache",
    "Refused",
    "check_url",
    "classify_address",
    "crawl",
    "is_placeholder",
    "largest_candidate",
    "list_crawls",
    "parse_listing",
    "parse_srcset",
    "pixabay_listing",
    "redact_url",
]
