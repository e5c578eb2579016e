"""The fetcher against a real local site: address policy at every hop, redirects, retries
with Retry-After, robots.txt, byte caps, content types, timeouts."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from test_crawler_site import LOCAL_ONLY, Reply, Site, fast_fetch, make_certificate

from twice.crawler import AddressPolicy, Fetcher, Refused, check_url, classify_address, redact_url
from twice.crawler.fetcher import parse_retry_after


@pytest.fixture
def site():
    with Site() as running:
        yield running


def refusal(fetcher: Fetcher, url: str, kind: str = "image") -> Refused:
    with pytest.raises(Refused) as info:
        fetcher.get(url, kind)
    return info.value


# addresses and URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback_address"),
        ("127.9.9.9", "loopback_address"),
        ("::1", "loopback_address"),
        ("::ffff:127.0.0.1", "loopback_address"),
        ("10.1.2.3", "private_address"),
        ("172.16.0.5", "private_address"),
        ("192.168.1.1", "private_address"),
        ("fd12::1", "private_address"),
        ("100.64.0.1", "private_address"),  # carrier-grade NAT: not global
        ("169.254.10.10", "link_local_address"),
        ("fe80::1", "link_local_address"),
        ("169.254.169.254", "metadata_address"),
        ("fd00:ec2::254", "metadata_address"),
        ("100.100.100.200", "metadata_address"),
        ("0.0.0.0", "reserved_address"),
        ("224.0.0.1", "reserved_address"),
        ("240.0.0.1", "reserved_address"),
    ],
)
def test_classify_address(address, reason):
    assert classify_address(ipaddress.ip_address(address)) == reason


def test_policy_allows_private_only_when_asked():
    assert AddressPolicy().refusal("10.0.0.1") == "private_address"
    assert AddressPolicy(allow_private=True).refusal("10.0.0.1") is None
    assert AddressPolicy(allow_private=True).refusal("127.0.0.1") is None
    # metadata endpoints hand out credentials: never, whatever the flags say
    assert AddressPolicy(allow_private=True).refusal("169.254.169.254") == "metadata_address"
    local = AddressPolicy.from_strings(False, ["127.0.0.1/32"])
    assert local.refusal("127.0.0.1") is None
    assert local.refusal("::ffff:127.0.0.1") is None
    assert local.refusal("127.0.0.2") == "loopback_address"
    with pytest.raises(ValueError, match="'not-a-net'"):
        AddressPolicy.from_strings(False, ["not-a-net"])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.org/a.jpg", "scheme"),
        ("gopher://example.org/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("//example.org/a.jpg", "scheme"),
        ("http:///nohost", "bad_url"),
        ("http://user:pw@example.org/a.jpg", "bad_url"),
        ("http://example.org:99999/", "bad_url"),
    ],
)
def test_check_url_refuses(url, reason):
    with pytest.raises(Refused) as info:
        check_url(url)
    assert info.value.reason == reason


def test_secrets_are_redacted_from_urls_and_messages():
    assert redact_url("https://x/api/?key=s3cret&q=cat") == "https://x/api/?key=REDACTED&q=cat"
    error = Refused("http_400", "https://x/api/?q=cat&key=s3cret", "GET /api/?q=cat&key=s3cret failed")
    assert "s3cret" not in str(error) and "s3cret" not in error.detail


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# the address policy inside the connection -----------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_site_refused_without_permission(site, host):
    site.add("/robots.txt", "", content_type="text/plain")
    site.add_image("/a.png", 1)
    url = site.url("/a.png").replace("127.0.0.1", host)
    with Fetcher(fast_fetch(policy=AddressPolicy())) as fetcher:
        error = refusal(fetcher, url)
    assert error.reason == "loopback_address"
    assert site.paths() == []  # not even robots.txt was asked for


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.255.1.1/a.png", "private_address"),
        ("http://192.168.0.1:8080/a.png", "private_address"),
        ("http://169.254.7.7/a.png", "link_local_address"),
        ("http://169.254.169.254/latest/meta-data/", "metadata_address"),
        ("http://[fd00:ec2::254]/latest/", "metadata_address"),
        ("http://0.0.0.0:80/", "reserved_address"),
        ("https://10.0.0.1/a.png", "private_address"),
        ("https://[::1]:8443/a.png", "loopback_address"),
    ],
)
def test_private_targets_refused_before_connecting(url, reason):
    started = time.monotonic()
    with Fetcher(fast_fetch(policy=AddressPolicy(), timeout=5.0)) as fetcher:
        error = refusal(fetcher, url)
    assert error.reason == reason
    assert time.monotonic() - started < 1.0  # refused, not timed out


def test_allowed_network_is_fetched_and_user_agent_sent(site):
    data = site.add_image("/a.png", 1)
    with Fetcher(fast_fetch()) as fetcher:
        fetched = fetcher.get(site.url("/a.png"), "image")
    assert fetched.content == data and fetched.content_type == "image/png"
    assert site.headers("/a.png")[0]["User-Agent"].startswith("twice-crawler/")
    assert site.count("/robots.txt") == 1  # asked first (404 here: everything allowed)


def test_hostname_judged_by_its_resolved_address(monkeypatch):
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):  # an innocent-looking name pointing at the metadata service
        return real("169.254.169.254" if host == "innocent.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with Fetcher(fast_fetch(policy=AddressPolicy(allow_private=True))) as fetcher:
        error = refusal(fetcher, "https://innocent.example/cat.jpg")
    assert error.reason == "metadata_address" and "resolves to 169.254.169.254" in error.detail


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_https_through_the_guard_keeps_certificate_checks(tmp_path, host):
    cert, key = make_certificate(tmp_path)
    with Site(tls=(cert, key)) as secure, Fetcher(fast_fetch()) as fetcher:
        data = secure.add_image("/a.png", 1)
        fetcher.session.verify = str(cert)
        url = secure.url("/a.png").replace("127.0.0.1", host)
        assert fetcher.get(url, "image").content == data


def test_https_certificate_for_another_name_refused(tmp_path):
    cert, key = make_certificate(tmp_path, "DNS:other.example")
    with Site(tls=(cert, key)) as secure, Fetcher(fast_fetch()) as fetcher:
        secure.add_image("/a.png", 1)
        fetcher.session.verify = str(cert)
        error = refusal(fetcher, secure.url("/a.png"))
    assert error.reason == "tls" and secure.paths() == []  # not even robots.txt was read


# redirects ---------------------------------------------------------------------------------


def test_redirects_followed_and_recorded(site):
    data = site.add_image("/real.png", 2)
    site.add("/one", status=301, headers={"Location": "/two"})
    site.add("/two", status=302, headers={"Location": site.url("/real.png")})
    with Fetcher(fast_fetch()) as fetcher:
        fetched = fetcher.get(site.url("/one"), "image")
    assert fetched.content == data
    assert fetched.url == site.url("/real.png")
    assert fetched.redirects == [site.url("/one"), site.url("/two")]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "metadata_address"),
        ("http://10.0.0.7/internal.png", "private_address"),
        ("http://127.0.0.2:{port}/a.png", "loopback_address"),  # loopback, but not the allowed /32
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:{port}/", "scheme"),
    ],
)
def test_redirect_into_refused_target(site, location, reason):
    site.add("/jump", status=302, headers={"Location": location.format(port=site.port)})
    with Fetcher(fast_fetch()) as fetcher:
        error = refusal(fetcher, site.url("/jump"))
    assert error.reason == reason
    assert error.url == site.url("/jump") and error.detail.startswith("redirected to ")
    assert site.paths() == ["/robots.txt", "/jump"]


def test_redirect_loop_is_cut(site):
    site.add("/loop", status=302, headers={"Location": "/loop"})
    with Fetcher(fast_fetch(max_redirects=3)) as fetcher:
        error = refusal(fetcher, site.url("/loop"))
    assert error.reason == "too_many_redirects"
    assert site.count("/loop") == 4


def test_redirect_hop_rechecked_by_callers_rule(site):
    site.add("/away", status=302, headers={"Location": f"http://localhost:{site.port}/x.png"})

    def same_host(url: str) -> None:
        if "127.0.0.1" not in url:
            raise Refused("off_host", url)

    with Fetcher(fast_fetch()) as fetcher, pytest.raises(Refused) as info:
        fetcher.get(site.url("/away"), "image", check=same_host)
    assert info.value.reason == "off_host"


# retries -----------------------------------------------------------------------------------


def test_429_then_200_waits_for_retry_after(site):
    data = site.add_image("/img.png", 3)
    site.add_handler(
        "/busy.png",
        lambda n: (
            Reply(429, b"slow down", "text/plain", headers={"Retry-After": "1"})
            if n == 1
            else Reply(200, data, "image/png")
        ),
    )
    with Fetcher(fast_fetch()) as fetcher:
        fetched = fetcher.get(site.url("/busy.png"), "image")
    assert fetched.content == data
    first, second = site.times("/busy.png")
    assert second - first >= 0.95  # Retry-After honoured (backoff alone is 0.05 s)


def test_long_retry_after_gives_up_at_once(site):
    site.add("/later.png", status=429, headers={"Retry-After": "3600"})
    with Fetcher(fast_fetch(retries=3)) as fetcher:
        error = refusal(fetcher, site.url("/later.png"))
    assert (error.reason, error.transient) == ("rate_limited", True)
    assert site.count("/later.png") == 1


def test_5xx_retried_with_backoff_then_failed(site):
    site.add("/down.png", status=503)
    with Fetcher(fast_fetch(retries=2, backoff=0.1)) as fetcher:
        error = refusal(fetcher, site.url("/down.png"))
    assert (error.reason, error.transient) == ("http_503", True)
    t = site.times("/down.png")
    assert len(t) == 3 and t[1] - t[0] >= 0.09 and t[2] - t[1] >= 0.19  # 0.1 s, then doubled


def test_404_is_final_not_retried(site):
    with Fetcher(fast_fetch(retries=3)) as fetcher:
        error = refusal(fetcher, site.url("/gone.png"))
    assert (error.reason, error.transient) == ("http_404", False)
    assert site.count("/gone.png") == 1


def test_slow_response_times_out(site):
    site.add_image("/slow.png", 4, delay=1.5)
    with Fetcher(fast_fetch(timeout=0.3, retries=1)) as fetcher:
        error = refusal(fetcher, site.url("/slow.png"))
    assert (error.reason, error.transient) == ("timeout", True)
    assert site.count("/slow.png") == 2


# bodies ------------------------------------------------------------------------------------


def test_declared_oversize_refused_without_reading(site):
    site.add("/huge.png", b"\x89PNG" + b"\0" * 50_000, content_type="image/png")
    with Fetcher(fast_fetch(max_image_bytes=10_000)) as fetcher:
        error = refusal(fetcher, site.url("/huge.png"))
    assert error.reason == "too_large" and "Content-Length 50004" in error.detail


def test_undeclared_oversize_cut_while_streaming(site):
    site.add("/stream.png", b"\x89PNG" + b"\0" * 300_000, content_type="image/png", length=False)
    with Fetcher(fast_fetch(max_image_bytes=100_000)) as fetcher:
        error = refusal(fetcher, site.url("/stream.png"))
    assert error.reason == "too_large" and "more than 100000 bytes" in error.detail


def test_gzip_bomb_counted_after_decompression(site):
    site.add("/zipped.png", b"\0" * 2_000_000, content_type="image/png", gzip=True)
    with Fetcher(fast_fetch(max_image_bytes=100_000)) as fetcher:
        error = refusal(fetcher, site.url("/zipped.png"))
    assert error.reason == "too_large"


@pytest.mark.parametrize(
    ("content_type", "kind", "ok"),
    [
        ("text/html", "image", False),
        ("image/svg+xml", "image", False),
        ("application/json", "image", False),
        ("application/octet-stream", "image", True),
        ("image/webp", "image", True),
        ("image/png", "page", False),
        ("application/xhtml+xml", "page", True),
    ],
)
def test_content_type_checked(site, content_type, kind, ok):
    site.add("/thing", b"body", content_type=content_type)
    with Fetcher(fast_fetch()) as fetcher:
        if ok:
            assert fetcher.get(site.url("/thing"), kind).content == b"body"
        else:
            assert refusal(fetcher, site.url("/thing"), kind).reason == "content_type"


# robots.txt --------------------------------------------------------------------------------


def test_robots_disallow_obeyed_and_fetched_once(site):
    site.add(
        "/robots.txt",
        "User-agent: *\nDisallow: /private/\n\nUser-agent: twice-crawler\nDisallow: /notforus/\n",
        content_type="text/plain",
    )
    site.add_image("/private/a.png", 1)
    site.add_image("/notforus/b.png", 2)
    site.add_image("/public/c.png", 3)
    with Fetcher(fast_fetch()) as fetcher:
        assert refusal(fetcher, site.url("/notforus/b.png")).reason == "robots"
        assert fetcher.get(site.url("/public/c.png"), "image").content
        assert fetcher.get(site.url("/private/a.png"), "image").content  # our group replaces '*'
    assert site.count("/robots.txt") == 1 and site.count("/notforus/b.png") == 0


def test_robots_rechecked_after_redirect(site):
    site.add("/robots.txt", "User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    site.add_image("/private/a.png", 1)
    site.add("/open/a.png", status=302, headers={"Location": "/private/a.png"})
    with Fetcher(fast_fetch()) as fetcher:
        assert refusal(fetcher, site.url("/open/a.png")).reason == "robots"
    assert site.count("/private/a.png") == 0


@pytest.mark.parametrize(("status", "allowed"), [(404, True), (410, True), (403, False), (500, False)])
def test_robots_status_rules(site, status, allowed):
    site.add("/robots.txt", "User-agent: *\nDisallow: /\n", status=status, content_type="text/plain")
    site.add_image("/a.png", 1)
    with Fetcher(fast_fetch(retries=0)) as fetcher:
        if allowed:
            assert fetcher.get(site.url("/a.png"), "image").content
        else:
            expected = {403: "robots", 500: "robots_unreachable"}[status]
            assert refusal(fetcher, site.url("/a.png")).reason == expected
            assert site.count("/a.png") == 0


def test_robots_crawl_delay_spaces_requests(site):
    site.add("/robots.txt", "User-agent: *\nCrawl-delay: 0.4\n", content_type="text/plain")
    for i in range(3):
        site.add_image(f"/{i}.png", i)
    with Fetcher(fast_fetch()) as fetcher:
        for i in range(3):
            fetcher.get(site.url(f"/{i}.png"), "image")
    times = site.times("/0.png") + site.times("/1.png") + site.times("/2.png")
    assert all(b - a >= 0.35 for a, b in zip(times, times[1:], strict=False))


def test_delay_spaces_requests_per_host(site):
    for i in range(3):
        site.add_image(f"/{i}.png", i)
    with Fetcher(fast_fetch(delay=0.3)) as fetcher:
        for i in range(3):
            fetcher.get(site.url(f"/{i}.png"), "image")
    times = [site.times(f"/{i}.png")[0] for i in range(3)]
    assert all(b - a >= 0.25 for a, b in zip(times, times[1:], strict=False))


def test_fetch_config_rejects_bad_values():
    with pytest.raises(ValueError, match="delay"):
        fast_fetch(delay=-1)
    with pytest.raises(ValueError, match="timeout"):
        fast_fetch(timeout=0)
    with pytest.raises(ValueError, match="kind"):
        Fetcher(fast_fetch()).get("http://127.0.0.1/", "video")


def test_local_only_policy_is_what_tests_use():
    assert LOCAL_ONLY.refusal("127.0.0.1") is None and LOCAL_ONLY.refusal("10.0.0.1") == "private_address"
