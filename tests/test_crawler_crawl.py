"""Whole crawls against a local site in the original source's lazy-load markup: what is
stored, what is refused and why, resuming, the Pixabay shortcut, and the CLI flow
crawl -> augment -> reindex -> search."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import time

import pytest
from PIL import Image
from test_crawler_site import Reply, Site, fast_fetch

from conftest import make_options
from imagegen import image_bytes, make_image
from twice.cli import main
from twice.crawler import CrawlConfig, HtmlListing, crawl, pixabay_listing
from twice.crawler.records import CrawlLog
from twice.imageio import sha256_bytes
from twice.indexer import Catalog

MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000
BLANK = "/static/img/blank.gif"


@pytest.fixture
def site():
    with Site() as running:
        yield running


@pytest.fixture
def crawl_options(tmp_path):
    return make_options(tmp_path / "data", max_image_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS)


def item(img: str, alt: str = "", href: str = "") -> str:
    inner = f'<img {img} alt="{alt}">'
    return (
        f'<div class="item"><a href="{href}">{inner}</a></div>'
        if href
        else f'<div class="item">{inner}</div>'
    )


def page(items: list[str], next_href: str | None = None) -> str:
    head = f'<link rel="next" href="{next_href}">' if next_href else ""
    return f"<html><head>{head}</head><body><div class='results'>{''.join(items)}</div></body></html>"


def build_cat_site(site: Site) -> dict:
    """Three listing pages with every good and bad case; returns what the crawl must store."""
    site.add("/robots.txt", "User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    good = {
        "cat1": site.add_image("/img/cat1.jpg", 1, (96, 72), "JPEG"),
        "cat2": site.add_image("/img/cat2.png", 2),
        "cat3": site.add_image("/img/cat3.png", 3),
        "cat4": site.add_image("/img/cat4.png", 4),
        "busy": image_bytes(make_image(6, (64, 48)), "PNG"),
        "cat7": site.add_image("/img/cat7.webp", 7, (80, 60), "WEBP"),
    }
    site.add("/img/cat1-copy.jpg", good["cat1"], content_type="image/jpeg")
    site.add("/img/cat3-again.png", good["cat3"], content_type="image/png")
    site.add("/img/moved.png", status=302, headers={"Location": "/img/cat4.png"})
    site.add_image("/private/cat5.png", 5)
    busy = good["busy"]
    site.add_handler(
        "/img/busy.png",
        lambda n: (
            Reply(429, b"", "text/plain", headers={"Retry-After": "1"})
            if n == 1
            else Reply(200, busy, "image/png")
        ),
    )
    site.add("/img/huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_BYTES + 1), content_type="image/png")
    site.add("/img/fake.jpg", "<html><body>not a picture</body></html>", content_type="image/jpeg")
    site.add("/img/bomb.png", image_bytes(Image.new("L", (2000, 2000)), "PNG"), content_type="image/png")
    site.add("/img/page.png", "<html>login first</html>", content_type="text/html")
    site.add("/img/meta.png", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    site.add_image("/img/slow.png", 8, delay=1.5)
    site.add("/img/tiny.png", image_bytes(make_image(9).resize((8, 8))), content_type="image/png")

    site.add(
        "/search/cats/",
        page(
            [
                item(
                    f'srcset="{BLANK} 1x" data-lazy-srcset="/img/cat1_small.jpg 1x, /img/cat1.jpg 2x"'
                    f' data-lazy-src="/img/cat1_small.jpg" src="{BLANK}"',
                    "cat, kitten, pet",
                    "/photos/cat-1/",
                ),
                item(
                    'data-lazy-src="/img/cat2.png" src="data:image/gif;base64,R0lGODlhAQABAAAAACw="', "tabby"
                ),
                item('src="../../img/cat3.png"'),
                item('src="/img/cat1-copy.jpg"', "the same cat"),
                item(f'src="{BLANK}"'),
                item('src="/pixel.gif" width="1" height="1"'),
                item('data-lazy-src="/img/moved.png"'),
                item('src="/private/cat5.png"'),
            ],
            "?pagi=2",
        ),
    )
    site.add(
        "/search/cats/?pagi=2",
        page(
            [
                item('data-lazy-src="/img/busy.png"'),
                item('src="/img/huge.png"'),
                item('src="/img/fake.jpg"'),
                item('src="/img/bomb.png"'),
                item('src="/img/page.png"'),
                item('src="/img/meta.png"'),
                item('src="/img/missing.png"'),
                item('src="file:///etc/passwd"'),
                item('src="/img/cat2.png"'),
                item('src="/img/cat3-again.png"'),
            ],
            "/search/cats/?pagi=3",
        ),
    )
    site.add(
        "/search/cats/?pagi=3",
        page(
            [
                item('src="/img/slow.png"'),
                item('src="/img/tiny.png"'),
                item('data-lazy-srcset="/img/cat7.webp 800w"'),
            ]
        ),
    )
    return good


EXPECTED_REFUSED = {
    "robots": 1,
    "too_large": 1,
    "not_image": 1,
    "bomb": 1,
    "content_type": 1,
    "metadata_address": 1,
    "http_404": 1,
    "scheme": 1,
    "too_small": 1,
}


def catalog_rows(options) -> list:
    catalog = Catalog(options.catalog_url)
    try:
        return list(catalog.get_many(catalog.ids().tolist()).values())
    finally:
        catalog.close()


def cat_config(**overrides) -> CrawlConfig:
    fetch = fast_fetch(max_image_bytes=MAX_BYTES, timeout=0.5, retries=1)
    return CrawlConfig(**{"pages": 3, "fetch": fetch, **overrides})


def test_crawl_stores_every_real_image_once_and_refuses_the_rest(site, crawl_options):
    good = build_cat_site(site)
    summary = crawl(crawl_options, HtmlListing(site.url("/search/cats/")), cat_config())

    assert summary.pages == 3 and summary.stopped == "3 pages done"
    assert summary.downloaded == 6 and summary.duplicates == 2
    assert dict(summary.refused) == EXPECTED_REFUSED
    assert dict(summary.failed) == {"timeout": 1}
    assert summary.placeholders == 2 and summary.skipped_done == 1  # cat2.png listed twice

    rows = {row.sha256: row for row in catalog_rows(crawl_options)}
    assert set(rows) == {sha256_bytes(data) for data in good.values()}
    cat1 = rows[sha256_bytes(good["cat1"])]
    assert cat1.source == site.url("/img/cat1.jpg") and cat1.page_url == site.url("/search/cats/")
    assert cat1.format == "JPEG" and (cat1.width, cat1.height) == (96, 72)
    assert cat1.meta["alt"] == "cat, kitten, pet" and cat1.meta["link"] == site.url("/photos/cat-1/")
    assert cat1.meta["crawl_id"] == summary.crawl_id and "crawled_at" in cat1.meta
    assert rows[sha256_bytes(good["cat4"])].meta["final_url"] == site.url("/img/cat4.png")
    assert rows[sha256_bytes(good["cat7"])].format == "WEBP"
    for row in rows.values():
        stored = crawl_options.images_dir / row.stored_path
        assert sha256_bytes(stored.read_bytes()) == row.sha256

    # never asked for: the small srcset candidate, placeholders, robots-disallowed paths
    for path in ("/img/cat1_small.jpg", BLANK, "/pixel.gif", "/private/cat5.png"):
        assert site.count(path) == 0, path
    assert site.count("/robots.txt") == 1
    busy = site.times("/img/busy.png")
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.95  # Retry-After: 1 honoured

    # the crawl's records: totals over its runs, and each URL's fate with its reason
    totals = summary.totals
    assert totals["status"] == "finished" and totals["runs"] == 1 and totals["finished_at"]
    assert (totals["pages"], totals["downloaded"], totals["duplicates"]) == (3, 6, 2)
    assert totals["refused"] == EXPECTED_REFUSED and totals["failed"] == {"timeout": 1}
    catalog = Catalog(crawl_options.catalog_url)
    try:
        log = CrawlLog(catalog, summary.crawl_id)
        meta = log.get("image", site.url("/img/meta.png"))
        assert meta.state == "refused" and meta.reason == "metadata_address"
        assert meta.detail.startswith("redirected to http://169.254.169.254/latest/meta-data/")
        bomb = log.get("image", site.url("/img/bomb.png"))
        assert bomb.reason == "bomb" and "2000x2000" in bomb.detail
        assert log.get("page", site.url("/search/cats/?pagi=3")).state == "partial"  # slow.png failed
        assert len(log.image_ids()) == 6
    finally:
        catalog.close()


def test_resume_skips_done_work_and_retries_failures(site, crawl_options):
    build_cat_site(site)
    listing = HtmlListing(site.url("/search/cats/"))
    first = crawl(crawl_options, listing, cat_config(limit=2))
    assert first.downloaded == 2 and first.stopped == "limit of 2 new images reached"
    assert first.pages == 1

    second = crawl(crawl_options, listing, cat_config())
    assert second.resumed and second.crawl_id == first.crawl_id
    assert second.downloaded == 4 and second.skipped_done == 3  # cat1, cat2 (+cat2 again on page 2)
    assert site.count("/img/cat1.jpg") == 1 and site.count("/img/cat2.png") == 1
    assert second.failed == {"timeout": 1}

    site.add_image("/img/slow.png", 8)  # the slow server recovered
    before = len(site.paths())
    third = crawl(crawl_options, listing, cat_config())
    assert third.pages_skipped == 2 and third.pages == 1  # only the partial page 3 is read again
    assert third.downloaded == 1 and third.skipped_done == 2 and not third.failed
    assert site.paths()[before:] == ["/robots.txt", "/search/cats/?pagi=3", "/img/slow.png"]

    before = len(site.paths())
    fourth = crawl(crawl_options, listing, cat_config())
    assert fourth.pages_skipped == 3 and fourth.downloaded == 0
    assert site.paths()[before:] == []  # a finished crawl asks the site for nothing
    assert fourth.totals["runs"] == 4 and fourth.totals["downloaded"] == 7
    assert len(catalog_rows(crawl_options)) == 7

    fresh = crawl(crawl_options, listing, cat_config(fresh=True))
    assert fresh.crawl_id != first.crawl_id and not fresh.resumed
    assert fresh.downloaded == 0 and fresh.duplicates == 9  # 7 images + 2 copies, all known bytes


def test_same_host_include_and_pagination_by_parameter(site, crawl_options):
    site.add_image("/a/1.png", 1)
    site.add_image("/b/2.png", 2)
    site.add_image("/a/3.png", 3)
    site.add(
        "/list",
        page(
            [
                item('src="/a/1.png"'),
                item('src="/b/2.png"'),
                item(f'src="http://localhost:{site.port}/a/9.png"'),
            ]
        ),
    )
    site.add("/list?n=2", page([item('src="/a/3.png"')]))
    config = cat_config(pages=5, same_host=True, include=r"/a/")
    summary = crawl(crawl_options, HtmlListing(site.url("/list"), page_param="n"), config)
    assert summary.downloaded == 2 and summary.filtered == 1
    assert summary.refused == {"off_host": 1, "http_404": 1}  # the image, then page 3
    assert summary.stopped == "page 3 not read (http_404)"
    assert site.count("/b/2.png") == 0


def test_crawl_config_rejects_bad_values():
    with pytest.raises(ValueError, match="pages"):
        CrawlConfig(pages=0)
    with pytest.raises(ValueError, match="'\\('"):
        CrawlConfig(include="(")


# the command line ------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """Small, CPU-only model settings for the CLI (it reads them from the environment)."""
    for name, value in {
        "IMAGE_SIZE": "64",
        "DEVICE": "cpu",
        "WORKERS": "0",
        "ALLOW_DOWNLOAD": "0",
        "BATCH_SIZE": "8",
        "MAX_IMAGE_BYTES": str(MAX_BYTES),
        "MAX_IMAGE_PIXELS": str(MAX_PIXELS),
    }.items():
        monkeypatch.setenv(f"TWICE_{name}", value)
    monkeypatch.delenv("PIXABAY_API_KEY", raising=False)
    return tmp_path / "data"


FAST = ["--delay", "0", "--timeout", "0.5", "--retries", "1", "--backoff", "0.05"]


def test_cli_private_target_refused_without_allow_private(site, cli_env, capsys):
    build_cat_site(site)
    code = main(["-q", "--data-dir", str(cli_env), "crawl", site.url("/search/cats/"), *FAST])
    out = capsys.readouterr().out
    assert code == 1
    assert "page 1 not read (loopback_address)" in out and "1 loopback_address" in out
    assert site.paths() == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "gopher://x/"])
def test_cli_non_http_start_url_is_an_error(cli_env, capsys, url):
    assert main(["--data-dir", str(cli_env), "crawl", url]) == 1
    assert "is not http or https" in capsys.readouterr().err


def test_cli_crawl_augment_index_then_search_finds_rotated_copy(site, cli_env, capsys, tmp_path):
    good = build_cat_site(site)
    code = main(
        [
            "-q",
            "--data-dir",
            str(cli_env),
            "crawl",
            site.url("/search/cats/"),
            "--pages",
            "3",
            "--allow-private",
            "--augment",
            "--index",
            "--json",
            *FAST,
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crawl"]["downloaded"] == 6 and report["crawl"]["refused"] == EXPECTED_REFUSED
    assert report["augment"]["originals"] == 6
    assert report["index"]["vectors"] == len(catalog_rows(make_options(cli_env)))

    rotated = Image.open(io.BytesIO(good["cat2"])).rotate(-90, expand=True)
    query = tmp_path / "query.png"
    rotated.save(query)
    assert main(["-q", "--data-dir", str(cli_env), "search", str(query), "-k", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]
    crawled = {row.sha256: row.id for row in catalog_rows(make_options(cli_env))}[sha256_bytes(good["cat2"])]
    assert (top["parent_id"], top["transform"]) == (crawled, "rotate")
    assert top["score"] > 0.999


def test_cli_list_and_refused_show_crawl_records(site, cli_env, capsys):
    site.add_image("/a.png", 1)
    site.add("/list", page([item('src="/a.png"'), item('src="/gone.png"')]))
    assert main(["-q", "--data-dir", str(cli_env), "crawl", site.url("/list"), "--allow-private", *FAST]) == 0
    capsys.readouterr()
    assert main(["-q", "--data-dir", str(cli_env), "crawl", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "#1" in listed and "stored 1" in listed and "refused 1" in listed and site.url("/list") in listed
    assert main(["-q", "--data-dir", str(cli_env), "crawl", "--refused", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("http_404") and site.url("/gone.png") in lines[0]
    assert main(["-q", "--data-dir", str(cli_env), "crawl", "--refused", "7"]) == 1
    assert "no crawl #7" in capsys.readouterr().err


# the Pixabay shortcut --------------------------------------------------------------------


def build_pixabay(site: Site) -> list[bytes]:
    """The same three photos behind a stand-in search page pair and a stand-in JSON API."""
    photos = [site.add_image(f"/photo/{i}_1280.png", 20 + i) for i in range(3)]
    tags = ["cat, kitten", "cat, sleeping", "cat, garden"]
    items = [
        item(
            f'srcset="{BLANK} 1x" data-lazy-srcset="/photo/{i}_1280.png 2x" src="{BLANK}"',
            tags[i],
            f"/p/{i}/",
        )
        for i in range(3)
    ]
    site.add("/images/search/cat/", page(items[:2]))
    site.add("/images/search/cat/?pagi=2", page(items[2:]))
    listing = pixabay_listing("cat", api_key="k3y-secret", api_url=site.url("/api/"))
    hits = [
        {
            "id": i,
            "pageURL": site.url(f"/p/{i}/"),
            "tags": tags[i],
            "largeImageURL": site.url(f"/photo/{i}_1280.png"),
        }
        for i in range(3)
    ]
    body = json.dumps({"total": 3, "totalHits": 3, "hits": hits})  # one page: per_page is 20
    site.add(listing.first_url()[len(site.url("")) :], body, content_type="application/json")
    return photos


def test_pixabay_site_and_api_give_the_same_catalog(site, cli_env, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    photos = build_pixabay(site)
    shas = {sha256_bytes(p) for p in photos}
    monkeypatch.setenv("PIXABAY_SITE_URL", site.url(""))
    monkeypatch.setenv("PIXABAY_API_URL", site.url("/api/"))
    args = ["crawl", "--pixabay", "cat", "--pages", "3", "--allow-private", *FAST]

    assert main(["-q", "--data-dir", str(tmp_path / "site"), *args]) == 0
    monkeypatch.setenv("PIXABAY_API_KEY", "k3y-secret")
    assert main(["-v", "-q", "--data-dir", str(tmp_path / "api"), *args]) == 0
    output = capsys.readouterr()

    site_rows = catalog_rows(make_options(tmp_path / "site"))
    api_rows = catalog_rows(make_options(tmp_path / "api"))
    assert {r.sha256 for r in site_rows} == shas == {r.sha256 for r in api_rows}
    by_sha = {r.sha256: r for r in api_rows}
    first = by_sha[sha256_bytes(photos[0])]
    assert first.meta["tags"] == ["cat", "kitten"] and first.page_url == site.url("/p/0/")
    assert {r.meta["alt"] for r in site_rows} == {r.meta["alt"] for r in api_rows}

    # the API key stays out of the database, the output and the logs
    with sqlite3.connect(tmp_path / "api" / "catalog.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert "crawl_urls" in dump and "k3y-secret" not in dump
    assert "k3y-secret" not in output.out + output.err + caplog.text


def _crawl_in_child(data_dir: str, url: str) -> None:
    main(["-q", "--data-dir", data_dir, "crawl", url, "--allow-private", "--delay", "0", "--timeout", "60"])


def test_kill_mid_crawl_then_resume(site, cli_env):
    """A crawl killed (SIGKILL) while downloading resumes without refetching what it stored."""
    for i in range(4):
        site.add_image(f"/k/{i}.png", 30 + i)
    site.add_image("/k/hang.png", 40, delay=30)
    images = [item(f'src="/k/{i}.png"') for i in range(2)] + [item('src="/k/hang.png"')]
    site.add("/list", page(images + [item(f'src="/k/{i}.png"') for i in range(2, 4)]))
    # fork: the child starts at once with everything imported, like a running `twice crawl`
    child = multiprocessing.get_context("fork").Process(
        target=_crawl_in_child, args=(str(cli_env), site.url("/list"))
    )
    child.start()
    try:
        deadline = time.monotonic() + 30
        while site.count("/k/hang.png") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert site.count("/k/hang.png") == 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
    assert len(catalog_rows(make_options(cli_env))) == 2

    site.add_image("/k/hang.png", 40)
    summary = crawl(make_options(cli_env), HtmlListing(site.url("/list")), cat_config(pages=1))
    assert summary.resumed and summary.skipped_done == 2 and summary.downloaded == 3
    assert [site.count(f"/k/{i}.png") for i in range(4)] == [1, 1, 1, 1]
    assert len(catalog_rows(make_options(cli_env))) == 5


def test_crawl_never_reads_the_vector_index(site, crawl_options):
    """Crawling only adds catalog rows: even a damaged index file does not stop it."""
    crawl_options.index_path.parent.mkdir(parents=True)
    crawl_options.index_path.write_bytes(b"not an index")
    site.add_image("/a.png", 1)
    site.add("/list", page([item('src="/a.png"')]))
    summary = crawl(crawl_options, HtmlListing(site.url("/list")), cat_config(pages=1))
    assert summary.downloaded == 1 and crawl_options.index_path.read_bytes() == b"not an index"
