"""Listing pages -> image URLs: lazy-load attributes, srcsets, placeholders, pagination.

One URL per ``<img>`` (a ``<picture>`` counts as one image with its ``<source>`` tags):
the largest candidate of its srcset attributes (``data-lazy-srcset``, ``data-srcset``,
``srcset``), else the first real URL of ``data-lazy-src``, ``data-src``,
``data-original``, ``src``. Lazy attributes come first because the plain ones of a
lazy-loading page hold the placeholder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from bs4 import BeautifulSoup, Tag

LOG = logging.getLogger(__name__)

SRCSET_ATTRS = ("data-lazy-srcset", "data-srcset", "srcset")
SRC_ATTRS = ("data-lazy-src", "data-src", "data-original", "src")
# Known blank images of lazy loaders (blank.gif, spacer.gif, 1x1.png, placeholder.svg, ...).
PLACEHOLDER_NAME = re.compile(
    r"^(blank|spacer|pixel|1x1|transparent|clear|empty|placeholder|lazy|lazyload|loading|dummy)"
    r"([-_.@]\w*)?\.(gif|png|jpe?g|svg|webp)$",
    re.IGNORECASE,
)
PLACEHOLDER_SCHEMES = ("data:", "about:", "blob:")
_DESCRIPTOR = re.compile(r"^(\d+(?:\.\d+)?)([wx])$", re.IGNORECASE)


@dataclass(frozen=True)
class ImageLink:
    """One image found on a listing, with what the page says about it."""

    url: str
    alt: str = ""
    title: str = ""
    link: str = ""  # the enclosing <a href>, usually the image's own page
    tags: tuple[str, ...] = ()
    page_url: str = ""  # where the image was found (or its page, for API hits)
    extra: dict = field(default_factory=dict, compare=False)

    def meta(self) -> dict:
        """The catalog ``meta`` fields this link contributes (empty ones left out)."""
        values = {"alt": self.alt, "title": self.title, "link": self.link, "tags": list(self.tags)}
        return {k: v for k, v in values.items() if v} | self.extra


@dataclass
class ListingPage:
    """What one listing page gave: its images, the next page, and what was dropped."""

    images: list[ImageLink]
    next_url: str | None = None
    placeholders: int = 0


def parse_srcset(value: str | None) -> list[tuple[str, float, str]]:
    """``(url, size, unit)`` candidates of a srcset; unit ``w`` (width) or ``x`` (density).

    URLs may contain commas (``w_100,h_80`` transforms), so a candidate's URL runs to the
    next whitespace and only a trailing comma ends it, as in the HTML standard.
    """
    if not value:
        return []
    candidates, i, n = [], 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        start = i
        while i < n and not value[i].isspace():
            i += 1
        url = value[start:i]
        if not url:
            break
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = i
            while i < n and value[i] != ",":
                i += 1
            descriptor = value[start:i].strip()
        match = _DESCRIPTOR.match(descriptor)
        size, unit = (float(match.group(1)), match.group(2).lower()) if match else (1.0, "x")
        if url:
            candidates.append((url, size, unit))
    return candidates


def largest_candidate(candidates: list[tuple[str, float, str]]) -> str | None:
    """The widest candidate (``w``), else the densest (``x``)."""
    if not candidates:
        return None
    widths = [c for c in candidates if c[2] == "w"]
    return max(widths or candidates, key=lambda c: c[1])[0]


def is_placeholder(url: str) -> bool:
    """A data: URI or a known blank image name: nothing worth downloading."""
    if url.lower().startswith(PLACEHOLDER_SCHEMES):
        return True
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return bool(PLACEHOLDER_NAME.match(name))


def is_tiny(tag: Tag) -> bool:
    """width and height attributes of at most 1 px: a tracking pixel or a spacer."""
    try:
        return int(tag.get("width", "2")) <= 1 and int(tag.get("height", "2")) <= 1
    except ValueError:
        return False


def pick_image_url(tags: list[Tag], base_url: str) -> tuple[str | None, bool]:
    """(best URL, whether placeholders were dropped) for one image's tags."""
    dropped, candidates = False, []
    for tag in tags:
        for attr in SRCSET_ATTRS:
            for url, size, unit in parse_srcset(tag.get(attr)):
                url = urljoin(base_url, url)
                if is_placeholder(url):
                    dropped = True
                else:
                    candidates.append((url, size, unit))
    best = largest_candidate(candidates)
    if best is not None:
        return best, dropped
    for tag in tags:
        for attr in SRC_ATTRS:
            value = (tag.get(attr) or "").strip()
            if not value:
                continue
            url = urljoin(base_url, value)
            if is_placeholder(url):
                dropped = True
            else:
                return url, dropped
    return None, dropped


def image_tag_groups(soup: BeautifulSoup) -> list[list[Tag]]:
    """The tags of each image on the page: ``[img]``, or a picture's sources plus its img."""
    groups = []
    for img in soup.find_all("img"):
        parent = img.parent
        if isinstance(parent, Tag) and parent.name == "picture":
            sources = [s for s in parent.find_all("source") if "svg" not in (s.get("type") or "")]
            groups.append([*sources, img])
        else:
            groups.append([img])
    return groups


def describe(img: Tag, base_url: str) -> dict:
    anchor = img.find_parent("a")
    href = (anchor.get("href") or "").strip() if anchor else ""
    return {
        "alt": " ".join((img.get("alt") or "").split()),
        "title": " ".join((img.get("title") or "").split()),
        "link": urljoin(base_url, href) if href and not href.startswith(("#", "javascript:")) else "",
    }


def extract_images(soup: BeautifulSoup, base_url: str, page_url: str = "") -> tuple[list[ImageLink], int]:
    """(image links in page order, each URL once; number of placeholder-only images)."""
    links: dict[str, ImageLink] = {}
    placeholders = 0
    for group in image_tag_groups(soup):
        img = group[-1]
        if is_tiny(img):
            placeholders += 1
            continue
        url, dropped = pick_image_url(group, base_url)
        if url is None:
            placeholders += int(dropped)
            continue
        if url not in links:
            links[url] = ImageLink(url=url, page_url=page_url or base_url, **describe(img, base_url))
    return list(links.values()), placeholders


def find_next_page(soup: BeautifulSoup, base_url: str) -> str | None:
    """The ``rel=next`` link (``<link>`` or ``<a>``) of a page, resolved, if any."""
    tag = soup.select_one('link[rel~="next"][href], a[rel~="next"][href]')
    if tag is None:
        return None
    href = tag["href"].strip()
    return urljoin(base_url, href) if href else None


def parse_listing(html: str | bytes, url: str) -> ListingPage:
    """Images and the rel=next link of one HTML listing page fetched from ``url``."""
    soup = BeautifulSoup(html, "html.parser")
    base = soup.find("base", href=True)
    base_url = urljoin(url, base["href"].strip()) if base else url
    images, placeholders = extract_images(soup, base_url, url)
    return ListingPage(images, find_next_page(soup, base_url), placeholders)
