"""A polite, safe image crawler: listing pages -> image URLs -> checked downloads -> catalog.

Usage (``options`` is a ``twice.options.Options``)::

    from twice.crawler import CrawlConfig, HtmlListing, crawl
    summary = crawl(options, HtmlListing("https://example.org/gallery/"), CrawlConfig(pages=2))
    print("
".join(summary.lines()))
"""

import lazy_loader

# Names load on first use, so importing the package (for one small part) stays light.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "crawl": ["CrawlConfig", "Crawler", "CrawlSummary", "crawl"],
        "fetcher": ["FetchConfig", "Fetched", "Fetcher"],
        "listings": ["HtmlListing", "Listing", "PixabayApiListing", "pixabay_listing"],
        "parse": [
            "ImageLink",
            "ListingPage",
            "is_placeholder",
            "largest_candidate",
            "parse_listing",
            "parse_srcset",
        ],
        "records": ["CrawlLog", "CrawlRecord", "CrawlUrl", "list_crawls"],
        "robots": ["RobotsCache"],
        "safety": ["AddressPolicy", "Refused", "check_url", "classify_address", "redact_url"],
    },
)
