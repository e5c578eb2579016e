"""How much one client may ask: token buckets (on a clock the test turns), the search bound, a
streamed JSON body over the cap, and one client's flood over a real server on 127.0.0.1 while
another client is served."""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections import Counter

import pytest
from werkzeug.serving import make_server

from conftest import make_options
from imagegen import write_images
from twice.indexer import reindex
from twice.web import app as api
from twice.web.limits import Limited, Rate, RateLimiter, SearchSlots


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_read_and_refused_by_value():
    assert Rate.parse("120/minute") == Rate(120, 60.0)
    assert Rate.parse("10 per second") == Rate(10, 1.0)
    assert Rate.parse("5/hours") == Rate(5, 3600.0)
    assert Rate.parse("") is None and Rate.parse("0") is None
    for bad in ("fast", "0/minute", "10/fortnight"):
        with pytest.raises(ValueError, match=repr(bad)):
            Rate.parse(bad)


def test_bucket_refills_evenly_and_per_client():
    clock = Clock()
    limiter = RateLimiter(Rate(3, 60.0), "search", clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(Limited) as refused:
        limiter.take("a")
    assert refused.value.retry_after == 20 and "3 per 60 s" in refused.value.message
    limiter.take("b")  # another client has its own bucket
    clock.now += 19.0
    with pytest.raises(Limited):
        limiter.take("a")
    clock.now += 1.0
    limiter.take("a")  # one request back after 60/3 s


def test_search_slots_refuse_rather_than_queue():
    slots = SearchSlots(1)
    with slots.hold(), pytest.raises(Limited), slots.hold():
        pass
    with slots.hold():  # released again
        pass
    with pytest.raises(ValueError, match="max_searches.*0"):
        SearchSlots(0)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("limits")
    options = make_options(root / "data")
    paths = write_images(root / "images", 3)
    reindex([root / "images"], options, embedder, progress=False)
    return options, paths


def test_429_with_retry_after_per_client_and_503_when_busy(indexed, embedder):
    options, paths = indexed
    app = api.create_app(options.with_overrides(search_rate="2/minute"), embedder=embedder)
    client = app.test_client()

    def search(address: str):
        query = {"image": (io.BytesIO(paths[0].read_bytes()), "q.png")}
        return client.post("/search", data=query, environ_base={"REMOTE_ADDR": address})

    assert [search("10.0.0.1").status_code for _ in range(2)] == [200, 200]
    limited = search("10.0.0.1")
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert search("10.0.0.2").status_code == 200  # another client is served
    slots = api.parts_of(app).slots
    with slots.hold(), slots.hold(), slots.hold(), slots.hold():  # max_searches=4: all taken
        busy = search("10.0.0.3")
    assert busy.status_code == 503 and busy.get_json()["error"]["code"] == "busy"
    assert busy.headers["Retry-After"] == "1"
    api.service_of(app).close()


@pytest.fixture
def live(indexed, embedder):
    """The real app over HTTP on 127.0.0.1 (werkzeug's threaded server), 20 searches an hour."""
    options, paths = indexed
    app = api.create_app(options.with_overrides(search_rate="20/hour", max_searches=8), embedder=embedder)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port, paths
    server.shutdown()
    api.service_of(app).close()


def post(port: int, source: str, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
    """One request from the local address ``source`` (127.0.0.0/8 is all this machine)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()) | {"body": response.read()}
    finally:
        connection.close()


def test_one_clients_flood_meets_429_while_another_is_served(live):
    port, _ = live
    query = json.dumps({"id": 1, "k": 2}).encode()
    headers = {"Content-Type": "application/json"}
    flood: Counter = Counter()
    other: list[int] = []

    def flooder(count: int) -> None:
        for _ in range(count):
            status, answer = post(port, "127.0.0.1", "/search", query, headers)
            flood[status] += 1
            if status == 429:
                assert int(answer["Retry-After"]) >= 1

    threads = [threading.Thread(target=flooder, args=(50,)) for _ in range(3)]  # 150 searches
    for thread in threads:
        thread.start()
    for _ in range(5):
        other.append(post(port, "127.0.0.2", "/search", query, headers)[0])
    for thread in threads:
        thread.join()
    assert sum(flood.values()) == 150 and set(flood) <= {200, 429}
    assert flood[200] >= 20 and flood[429] >= 150 - 21  # 20 at once, then one per 180 s
    assert other == [200] * 5


def test_a_streamed_json_body_over_the_cap_is_413(indexed, embedder):
    options, _ = indexed
    app = api.create_app(options.with_overrides(max_json_bytes=64 * 1024), embedder=embedder)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        chunks = (b'{"url": "' if i == 0 else b"a" * 16384 for i in range(64))  # 1 MiB, no length
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
        connection.request(
            "POST", "/search", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True
        )
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 413 and body["error"]["code"] == "too_large"
        assert "65536" in body["error"]["message"]
        connection.close()
    finally:
        server.shutdown()
        api.service_of(app).close()
