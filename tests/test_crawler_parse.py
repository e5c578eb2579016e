"""Listing pages -> image URLs: lazy attributes, srcsets, pictures, placeholders, next links."""

from __future__ import annotations

import json

import pytest

from twice.crawler import PixabayApiListing, is_placeholder, largest_candidate, parse_listing, parse_srcset
from twice.crawler.fetcher import Fetched
from twice.crawler.listings import HtmlListing, pixabay_listing, with_query

BASE = "https://site.example/search/cats/"

# The markup of the original source's lazy-loading result pages.
LAZY_PAGE = """
<html><head><link rel="next" href="?pagi=2"></head><body>
<div class="results">
  <div class="item"><a href="/photos/cat-1/">
    <img srcset="/static/img/blank.gif 1x" data-lazy-srcset="https://cdn.site.example/cat1_340.jpg 1x,
      https://cdn.site.example/cat1_680.jpg 2x" data-lazy-src="https://cdn.site.example/cat1_340.jpg"
      src="/static/img/blank.gif" alt="cat, kitten, pet">
  </a></div>
  <div class="item"><a href="/photos/cat-2/">
    <img data-lazy-src="/img/cat2.jpg" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="tabby">
  </a></div>
  <div class="item"><img src="img/cat3.png" title="  relative  url "></div>
  <div class="item"><img srcset="/img/cat4_320.jpg 320w, /img/cat4_1280.jpg 1280w, /img/cat4_640.jpg 640w"
      src="/img/cat4_320.jpg"></div>
  <div class="item"><picture>
      <source type="image/svg+xml" srcset="/img/cat5.svg 4000w">
      <source type="image/webp" srcset="/img/cat5_small.webp 400w, /img/cat5_big.webp 1600w">
      <img src="/img/cat5.jpg" alt="in a picture">
  </picture></div>
  <div class="item"><img data-src="/img/cat6.jpg"></div>
  <img src="/static/img/blank.gif">
  <img src="/track/px.gif" width="1" height="1">
  <img src="data:image/png;base64,iVBORw0KGgo=">
  <img alt="no source at all">
  <img src="https://cdn.site.example/cat1_680.jpg" alt="same url again">
  <img src="ftp://files.site.example/cat7.jpg">
</div>
<video><source src="/movie.mp4"></video>
</body></html>
"""


def test_lazy_listing_gives_one_best_url_per_image():
    page = parse_listing(LAZY_PAGE, BASE)
    assert [link.url for link in page.images] == [
        "https://cdn.site.example/cat1_680.jpg",  # largest of data-lazy-srcset, not the blank srcset
        "https://site.example/img/cat2.jpg",  # data-lazy-src over the data: URI in src
        "https://site.example/search/cats/img/cat3.png",  # relative to the page
        "https://site.example/img/cat4_1280.jpg",  # widest candidate, whatever the order
        "https://site.example/img/cat5_big.webp",  # a picture is one image; svg sources skipped
        "https://site.example/img/cat6.jpg",
        "ftp://files.site.example/cat7.jpg",  # kept here, refused (scheme) by the fetcher
    ]
    assert page.placeholders == 3  # blank.gif, the 1x1 pixel, the data: URI
    assert page.next_url == "https://site.example/search/cats/?pagi=2"


def test_page_metadata_recorded():
    first, second, third = parse_listing(LAZY_PAGE, BASE).images[:3]
    assert first.alt == "cat, kitten, pet" and first.link == "https://site.example/photos/cat-1/"
    assert first.page_url == BASE
    assert second.meta() == {"alt": "tabby", "link": "https://site.example/photos/cat-2/"}
    assert third.meta() == {"title": "relative url"}


def test_base_href_and_anchor_next():
    html = (
        '<base href="https://other.example/root/"><img src="a.png"><a rel="next nofollow" href="p2">more</a>'
    )
    page = parse_listing(html, BASE)
    assert [i.url for i in page.images] == ["https://other.example/root/a.png"]
    assert page.next_url == "https://other.example/root/p2"
    assert parse_listing("<img src='/a.png'>", BASE).next_url is None


@pytest.mark.parametrize(
    ("srcset", "expected"),
    [
        ("a.jpg 1x, b.jpg 2x", [("a.jpg", 1.0, "x"), ("b.jpg", 2.0, "x")]),
        ("a.jpg", [("a.jpg", 1.0, "x")]),
        ("a.jpg 100w,b.jpg 200w", [("a.jpg", 100.0, "w"), ("b.jpg", 200.0, "w")]),
        ("a.jpg, b.jpg 2x", [("a.jpg", 1.0, "x"), ("b.jpg", 2.0, "x")]),
        ("a.jpg,b.jpg 2x", [("a.jpg,b.jpg", 2.0, "x")]),  # the standard: no space, one URL
        # commas inside a URL (image-CDN transforms) are part of it
        (
            "/c/w_100,h_80/a.jpg 100w, /c/w_400,h_320/a.jpg 400w",
            [("/c/w_100,h_80/a.jpg", 100.0, "w"), ("/c/w_400,h_320/a.jpg", 400.0, "w")],
        ),
        ("  \n a.jpg   1.5x ,\n b.jpg 3x ", [("a.jpg", 1.5, "x"), ("b.jpg", 3.0, "x")]),
        ("", []),
        (None, []),
    ],
)
def test_parse_srcset(srcset, expected):
    assert parse_srcset(srcset) == expected


def test_largest_candidate_prefers_width_then_density():
    assert largest_candidate(parse_srcset("a 1x, b 3x, c 2x")) == "b"
    assert largest_candidate(parse_srcset("a 2x, b 300w, c 900w")) == "c"
    assert largest_candidate([]) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("data:image/gif;base64,R0lGOD", True),
        ("https://x/static/img/blank.gif", True),
        ("https://x/spacer.gif", True),
        ("https://x/images/1x1.png", True),
        ("https://x/assets/placeholder-grey.svg", True),
        ("https://x/lazy_load.png?v=2", True),
        ("https://x/photos/blanket.jpg", False),
        ("https://x/photos/cat.jpg", False),
    ],
)
def test_is_placeholder(url, expected):
    assert is_placeholder(url) is expected


def test_html_listing_page_patterns():
    assert HtmlListing(BASE, page_param="page").page_url(3) == BASE + "?page=3"
    assert with_query("https://x/s?q=cat&page=1", page=2) == "https://x/s?q=cat&page=2"
    listing = HtmlListing(BASE, page_template="https://site.example/search/cats/{page}/")
    assert listing.page_url(1) == BASE and listing.page_url(4) == "https://site.example/search/cats/4/"
    assert HtmlListing(BASE).page_url(2) is None  # rel=next decides
    with pytest.raises(ValueError, match="ftp://x/"):
        HtmlListing("ftp://x/")
    with pytest.raises(ValueError, match="no \\{page\\} placeholder"):
        HtmlListing(BASE, page_template="https://x/p/")


def test_pattern_overrides_rel_next():
    fetched = Fetched(BASE, 200, "text/html", LAZY_PAGE.encode())
    assert HtmlListing(BASE, page_param="p").read(fetched, 1).next_url == BASE + "?p=2"
    assert HtmlListing(BASE).read(fetched, 1).next_url == BASE + "?pagi=2"


def test_pixabay_listing_chooses_site_or_api(monkeypatch):
    monkeypatch.delenv("PIXABAY_API_KEY", raising=False)
    site = pixabay_listing("black cat", site_url="http://127.0.0.1:9/")
    assert site.first_url() == "http://127.0.0.1:9/images/search/black%20cat/"
    assert site.page_url(2) == "http://127.0.0.1:9/images/search/black%20cat/?pagi=2"
    monkeypatch.setenv("PIXABAY_API_KEY", "k3y")
    api = pixabay_listing("black cat", api_url="http://127.0.0.1:9/api/")
    assert isinstance(api, PixabayApiListing)
    assert "q=black+cat" in api.first_url() and "key=k3y" in api.first_url()
    assert "k3y" not in api.public_url(api.first_url())
    with pytest.raises(ValueError, match="empty"):
        pixabay_listing("  ")


def test_pixabay_api_page_reading():
    listing = PixabayApiListing("cat", "k3y", "http://127.0.0.1:9/api/", per_page=3)
    body = {
        "totalHits": 5,
        "hits": [
            {
                "id": 1,
                "pageURL": "https://p/1",
                "tags": "cat, pet",
                "largeImageURL": "https://c/1.jpg",
                "user": "u",
            },
            {"id": 2, "pageURL": "https://p/2", "tags": "", "webformatURL": "https://c/2_640.jpg"},
            {"id": 3, "pageURL": "https://p/3"},  # no image URL: skipped
        ],
    }
    page = listing.read(Fetched(listing.first_url(), 200, "application/json", json.dumps(body).encode()), 1)
    assert [i.url for i in page.images] == ["https://c/1.jpg", "https://c/2_640.jpg"]
    assert page.images[0].meta() == {
        "alt": "cat, pet",
        "link": "https://p/1",
        "tags": ["cat", "pet"],
        "pixabay_id": 1,
        "user": "u",
    }
    assert page.next_url == listing.page_url(2)
    last = listing.read(Fetched(listing.page_url(2), 200, "application/json", json.dumps(body).encode()), 2)
    assert last.next_url is None  # 2 pages of 3 cover 5 hits
    with pytest.raises(Exception, match="bad_json"):
        listing.read(Fetched(listing.first_url(), 200, "application/json", b"<html>"), 1)
