"""Findings of issue 25 outside the web layer, each reproduced with real parts: a slow-body
server on 127.0.0.1, links in the HTML report, stored paths that leave the image store, and
decode workers of a SIGKILLed reindex."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_crawler_site import Reply, Site, fast_fetch

from conftest import ROOT, make_options
from imagegen import image_bytes, make_image, write_images
from processes import alive, wait_for_children
from twice.crawler import Fetcher, Refused
from twice.files import OutsideStore
from twice.indexer import Catalog, ImageRow, Indexer
from twice.search.report_html import source_html
from twice.web import app as api
from twice.web.service import FetchFailed, fetch_url

# 2. slow bodies ------------------------------------------------------------------------------

SLOW_BODY = b"\x89PNG" + b"\0" * 96  # 100 bytes, 0.2 s apart: 20 s if nothing cuts it


@pytest.fixture
def slow_site():
    with Site() as site:
        site.routes["/slow.png"] = Reply(body=SLOW_BODY, content_type="image/png", trickle=0.2)
        yield site


def test_crawler_fetch_ends_at_its_deadline_though_every_read_is_quick(slow_site):
    # each byte comes well inside the 1 s read timeout: only a wall-clock limit stops it
    config = fast_fetch(timeout=1.0, max_seconds=1.5, retries=0)
    started = time.monotonic()
    with Fetcher(config) as fetcher, pytest.raises(Refused) as info:
        fetcher.get(slow_site.url("/slow.png"), "image", robots=False)
    took = time.monotonic() - started
    assert (info.value.reason, info.value.transient) == ("timeout", True)
    assert "1.5s" in str(info.value)
    assert took < 6.0, f"a 1.5 s deadline held the fetch {took:.1f}s"


def test_service_fetch_ends_at_its_deadline(slow_site):
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="timeout"):
        fetch_url(slow_site.url("/slow.png"), 1 << 20, timeout=0.5, allow_private=True)
    took = time.monotonic() - started
    assert took < 6.0, f"a 1.5 s deadline (3 x 0.5 s) held the fetch {took:.1f}s"


def test_slow_headers_end_at_the_deadline_too(slow_site):
    # the answer starts within the read timeout, but after the whole fetch's deadline
    slow_site.routes["/late.png"] = Reply(body=SLOW_BODY, content_type="image/png", delay=1.5)
    config = fast_fetch(timeout=2.0, max_seconds=0.5, retries=2)
    with Fetcher(config) as fetcher, pytest.raises(Refused) as info:
        fetcher.get(slow_site.url("/late.png"), "image", robots=False)
    assert info.value.reason == "timeout" and "0.5s" in str(info.value)
    assert slow_site.count("/late.png") == 1  # no retry after the deadline


def test_a_fetch_within_its_deadline_is_whole(slow_site):
    slow_site.routes["/quick.png"] = Reply(body=SLOW_BODY[:10], content_type="image/png", trickle=0.05)
    with Fetcher(fast_fetch(timeout=1.0, max_seconds=5.0)) as fetcher:
        assert fetcher.get(slow_site.url("/quick.png"), "image", robots=False).content == SLOW_BODY[:10]


# 5. links in the HTML report -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "\tjavascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
    ],
)
def test_report_links_only_http(url):
    html = source_html({"source": url, "page_url": url})
    assert "href" not in html
    assert "alert" in html or "msgbox" in html or "passwd" in html  # shown as text
    assert "<script>" not in html


def test_report_keeps_web_links():
    html = source_html({"source": "https://example.org/a.jpg", "page_url": "HTTP://example.org/p"})
    assert 'href="https://example.org/a.jpg"' in html and 'href="HTTP://example.org/p"' in html


# 6. the image store keeps to itself ----------------------------------------------------------


@pytest.fixture
def planted(tmp_path):
    """A data dir with two images, a secret file beside it, and a client (no model needed)."""
    options = make_options(tmp_path / "data")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    indexer = Indexer(options, "test", 4)
    ids = [indexer.add_bytes(image_bytes(make_image(seed)), f"seed{seed}").row.id for seed in (1, 2)]
    indexer.close()
    app = api.create_app(options)
    yield app.test_client(), options, ids, secret
    api.service_of(app).close()


def set_stored_path(options, image_id: int, stored: str) -> None:
    catalog = Catalog(options.catalog_url)
    with catalog.session() as session:
        session.get(ImageRow, image_id).stored_path = stored
    catalog.close()


def test_stored_path_leaving_the_store_is_not_served_or_deleted(planted):
    client, options, ids, secret = planted
    escape = os.path.relpath(secret, options.images_dir)
    set_stored_path(options, ids[0], escape)
    assert (options.images_dir / escape).read_text() == "do not serve me"  # the row does reach it
    response = client.get(f"/images/{ids[0]}/file")
    assert response.status_code == 404 and b"do not serve me" not in response.data
    assert "not in the image store" in response.get_json()["error"]["message"]
    assert client.get(f"/images/{ids[0]}/thumbnail").status_code == 404
    service = api.service_of(client.application)
    service.remove(ids[0])
    assert secret.exists()  # the row went, the file it pointed at did not


def test_symlink_inside_the_store_pointing_out_is_not_followed(planted):
    client, options, ids, secret = planted
    link = options.images_dir / "ab" / "link.png"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(secret)
    set_stored_path(options, ids[1], "ab/link.png")
    response = client.get(f"/images/{ids[1]}/file")
    assert response.status_code == 404 and b"do not serve me" not in response.data
    api.service_of(client.application).remove(ids[1])
    assert secret.exists()


def test_store_path_refuses_absolute_and_parent_paths(tmp_path):
    from twice.files import ImageStore

    store = ImageStore(tmp_path / "images")
    for bad in ("/etc/passwd", "../x.png", "ab/../../x.png", "", "."):
        with pytest.raises(OutsideStore, match="outside the image store"):
            store.path(bad)
    assert store.path("ab/abc.png") == tmp_path / "images" / "ab" / "abc.png"
    assert store.remove("../x.png") is False


# 7. workers die with a killed reindex --------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")
def test_decode_workers_die_with_a_killed_reindex(tmp_path):
    write_images(tmp_path / "images", 400)
    options = make_options(tmp_path / "data", workers=2, batch_size=4)
    env = {**os.environ, **options.to_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "twice", "-q", "reindex", str(tmp_path / "images")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        workers = wait_for_children(process, 2, seconds=120)
        assert len(workers) >= 2, f"no decode workers seen: {process.stderr.read().decode()[-2000:]}"
        time.sleep(0.5)  # let them get busy decoding
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        gone_by = time.monotonic() + 3.0
        while any(map(alive, workers)) and time.monotonic() < gone_by:
            time.sleep(0.05)
        survivors = [pid for pid in workers if alive(pid)]
        assert not survivors, f"workers {survivors} outlived the killed reindex"
    finally:
        process.kill()
        for pid in filter(alive, workers):
            os.kill(pid, signal.SIGKILL)
