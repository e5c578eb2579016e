"""Where listing pages come from and how they read: HTML pages, or Pixabay's JSON API.

A listing tells the crawl loop its first URL, how to read a fetched page (images + the next
page's URL), and what identifies it (the key that makes a re-run resume the same crawl).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .fetcher import Fetched
from .parse import ImageLink, ListingPage, parse_listing
from .safety import Refused, check_url, redact_url

LOG = logging.getLogger(__name__)

PIXABAY_SITE_URL = "https://pixabay.com"
PIXABAY_API_URL = "https://pixabay.com/api/"
PIXABAY_PAGE_PARAM = "pagi"  # pixabay.com/images/search/cat/?pagi=2


class Listing(Protocol):
    kind: str  # what the fetcher should expect: "page" or "json"
    robots: bool  # whether robots.txt governs the listing URLs

    def first_url(self) -> str: ...

    def page_url(self, number: int) -> str | None: ...

    def read(self, fetched: Fetched, number: int) -> ListingPage: ...

    def identity(self) -> dict: ...

    def public_url(self, url: str) -> str: ...


def with_query(url: str, **params: object) -> str:
    """``url`` with the given query parameters set (others kept, in order)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


class HtmlListing:
    """HTML listing pages from ``start_url``; page 2.. from ``rel=next``, a query parameter
    (``page_param``) or a URL template with ``{page}`` (``page_template``)."""

    kind = "page"
    robots = True

    def __init__(
        self, start_url: str, page_param: str | None = None, page_template: str | None = None
    ) -> None:
        try:
            check_url(start_url)
        except Refused as exc:
            raise ValueError(f"crawl URL {start_url!r}: {exc.detail}") from None
        if page_param and page_template:
            raise ValueError("give a page parameter or a page URL template, not both")
        if page_template is not None and "{page}" not in page_template:
            raise ValueError(f"page URL template {page_template!r} has no {{page}} placeholder")
        self.start_url = start_url
        self.page_param = page_param
        self.page_template = page_template

    def first_url(self) -> str:
        return self.start_url

    def page_url(self, number: int) -> str | None:
        """The URL of page ``number`` when the pattern fixes it, else ``None``."""
        if number == 1:
            return self.start_url
        if self.page_param:
            return with_query(self.start_url, **{self.page_param: number})
        if self.page_template:
            return self.page_template.format(page=number)
        return None

    def read(self, fetched: Fetched, number: int) -> ListingPage:
        page = parse_listing(fetched.content, fetched.url)
        pattern_next = self.page_url(number + 1)
        if pattern_next is not None:
            page.next_url = pattern_next
        return page

    def identity(self) -> dict:
        return {
            "listing": "html",
            "url": self.start_url,
            "page_param": self.page_param,
            "page_template": self.page_template,
        }

    def public_url(self, url: str) -> str:
        return url


class PixabayApiListing:
    """Pixabay's official search API (https://pixabay.com/api/docs/): JSON pages of hits."""

    kind = "json"
    robots = False  # an API made for programs; the images themselves still obey robots.txt

    def __init__(
        self,
        term: str,
        key: str,
        api_url: str = PIXABAY_API_URL,
        per_page: int = 20,
        safesearch: bool = True,
    ) -> None:
        if not term.strip():
            raise ValueError("the Pixabay search term is empty")
        if not key:
            raise ValueError("a Pixabay API key is needed (PIXABAY_API_KEY)")
        if not 3 <= per_page <= 200:
            raise ValueError(f"per_page must be 3..200 (the API's range), got {per_page}")
        self.term, self.key, self.api_url = term.strip(), key, api_url
        self.per_page, self.safesearch = per_page, safesearch

    def page_url(self, number: int) -> str:
        return with_query(
            self.api_url,
            key=self.key,
            q=self.term,
            image_type="photo",
            safesearch=str(self.safesearch).lower(),
            per_page=self.per_page,
            page=number,
        )

    def first_url(self) -> str:
        return self.page_url(1)

    def read(self, fetched: Fetched, number: int) -> ListingPage:
        try:
            body = json.loads(fetched.content)
            hits, total = body["hits"], int(body.get("totalHits", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused("bad_json", self.public_url(fetched.url), str(exc)) from None
        images = [link for link in map(self._link, hits) if link is not None]
        more = hits and number * self.per_page < total
        return ListingPage(images, self.page_url(number + 1) if more else None)

    @staticmethod
    def _link(hit: dict) -> ImageLink | None:
        url = hit.get("largeImageURL") or hit.get("webformatURL")
        if not isinstance(url, str) or not url:
            return None
        tags = tuple(t.strip() for t in str(hit.get("tags", "")).split(",") if t.strip())
        extra = {"pixabay_id": hit.get("id"), "user": hit.get("user")}
        return ImageLink(
            url=url,
            alt=", ".join(tags),
            link=str(hit.get("pageURL", "")),
            tags=tags,
            page_url=str(hit.get("pageURL", "")),
            extra={k: v for k, v in extra.items() if v is not None},
        )

    def identity(self) -> dict:
        return {
            "listing": "pixabay-api",
            "url": self.api_url,
            "term": self.term,
            "safesearch": self.safesearch,
        }

    def public_url(self, url: str) -> str:
        """``url`` without the API key: it must not end up in the catalog or the logs."""
        return redact_url(url)


def pixabay_listing(
    term: str,
    api_key: str | None = None,
    site_url: str | None = None,
    api_url: str | None = None,
) -> Listing:
    """The Pixabay source for ``term``: the JSON API when a key is given (argument or
    ``PIXABAY_API_KEY``), else the site's search pages. ``PIXABAY_SITE_URL`` and
    ``PIXABAY_API_URL`` move the base URLs (a mirror, or a local stand-in in tests)."""
    term = term.strip()
    if not term:
        raise ValueError("the Pixabay search term is empty")
    api_key = api_key if api_key is not None else os.environ.get("PIXABAY_API_KEY", "")
    if api_key:
        return PixabayApiListing(
            term, api_key, api_url or os.environ.get("PIXABAY_API_URL") or PIXABAY_API_URL
        )
    site = (site_url or os.environ.get("PIXABAY_SITE_URL") or PIXABAY_SITE_URL).rstrip("/")
    start = f"{site}/images/search/{quote(term, safe='')}/"
    return HtmlListing(start, page_param=PIXABAY_PAGE_PARAM)
