"""The HTTP API through Flask's test client: every route, every error status, real data dirs;
the write paths on SQLite and on PostgreSQL catalogs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from pg import clone_database
from PIL import Image, ImageOps

import conftest
from awkward import bad_images
from conftest import BACKENDS
from imagegen import image_bytes, make_image, write_images
from twice.files import atomic_write
from twice.indexer import Catalog, VectorIndex, reindex
from twice.indexer.store import FileStamp
from twice.web import app as api
from twice.web.service import SearchService

N_IMAGES = 6
# Writes need a token: every client here sends this one (tests/test_api_auth.py tests the rest).
TOKEN = "twice_api-test-token"


def make_options(data_dir: Path, **overrides):
    return conftest.make_options(data_dir, api_token=TOKEN, **overrides)


def client_of(app):
    """A test client that sends the token with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


# fixtures ------------------------------------------------------------------------------------


def build_index(root: Path, embedder, count: int = N_IMAGES, **overrides):
    """A real data dir: ``count`` images written and indexed by the real reindex."""
    options = make_options(root / "data", **overrides)
    paths = write_images(root / "images", count)
    reindex([root / "images"], options, embedder, progress=False)
    return options, paths


def image_id_of(options, path: Path) -> int:
    catalog = Catalog(options.catalog_url)
    try:
        return catalog.by_sha256(hashlib.sha256(path.read_bytes()).hexdigest()).id
    finally:
        catalog.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory, embedder):
    """One indexed data dir, built once per module by the real reindex."""
    return build_index(tmp_path_factory.mktemp("api"), embedder)


@pytest.fixture(scope="module")
def shared(template, embedder):
    """A read-only indexed data dir and a client over it (tests here must not write)."""
    options, paths = template
    app = api.create_app(options, embedder=embedder)
    yield client_of(app), options, paths
    api.service_of(app).close()


@pytest.fixture(scope="module")
def postgres_template(tmp_path_factory, embedder, postgres_server):
    """The template's twin with its catalog on PostgreSQL (a database nobody stays connected to)."""
    return build_index(tmp_path_factory.mktemp("api-pg"), embedder, db_url=postgres_server.new_database())


@pytest.fixture(params=BACKENDS)
def any_template(request):
    """The template data dir with its catalog on each backend in turn."""
    return request.getfixturevalue("template" if request.param == "sqlite" else "postgres_template")


def copy_of(template, tmp_path: Path, **overrides):
    """A writable copy of the template's data dir and catalog (cheaper than indexing again)."""
    options, paths = template
    shutil.copytree(options.data_dir, tmp_path / "data")
    db_url = clone_database(options.db_url) if options.db_url else ""
    return make_options(tmp_path / "data", db_url=db_url, **overrides), paths


@pytest.fixture
def fresh(any_template, tmp_path, embedder):
    """A writable indexed data dir of its own, and a client (on each catalog backend in turn)."""
    options, paths = copy_of(any_template, tmp_path)
    app = api.create_app(options, embedder=embedder)
    yield client_of(app), options, paths
    api.service_of(app).close()


def upload(data: bytes, name: str = "query.png", **fields) -> dict:
    return {"image": (io.BytesIO(data), name), **fields}


def assert_error(response, status: int, code: str, *words: str) -> None:
    """A JSON error body with the status, code and message words, and no stack trace."""
    assert response.status_code == status, response.data[:500]
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    for word in words:
        assert word in error["message"]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text


# the page ------------------------------------------------------------------------------------


def test_page_is_served_with_the_upload_form(shared):
    client, _, _ = shared
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '<form id="upload-form"' in page
    assert 'type="file"' in page and 'name="image"' in page
    assert "/search" in page and "badge" in page


def test_creating_the_app_loads_no_model(tmp_path):
    app = api.create_app(make_options(tmp_path / "data"))
    service = api.service_of(app)
    assert service._embedder is None and not service._opened
    assert not (tmp_path / "data").exists()


# POST /search --------------------------------------------------------------------------------


def test_upload_search_finds_the_same_bytes_at_rank_1(shared, embedder):
    client, options, paths = shared
    expected = image_id_of(options, paths[2])
    response = client.post("/search?k=3", data=upload(paths[2].read_bytes()))
    assert response.status_code == 200
    body = response.get_json()
    assert [r["id"] for r in body["results"]][0] == expected
    top = body["results"][0]
    assert top["exact"] is True and top["verdict"] == "duplicate" and top["score"] == 1.0
    assert top["source"] == str(paths[2])
    assert (top["width"], top["height"], top["format"]) == (96, 72, "PNG")
    assert top["thumb_url"] == f"/images/{expected}/file?thumb=256"
    assert len(body["results"]) == 3
    assert body["model"] == embedder.version
    assert body["query"]["width"] == 96 and body["took_ms"] >= 0
    assert {"duplicate", "similar", "source"} <= set(body["thresholds"])


def test_k_defaults_to_10_and_is_checked(shared):
    client, _, paths = shared
    data = paths[0].read_bytes()
    assert len(client.post("/search", data=upload(data)).get_json()["results"]) == N_IMAGES
    assert client.post("/search?k=100", data=upload(data)).status_code == 200
    assert len(client.post("/search", data=upload(data, k="2")).get_json()["results"]) == 2
    for bad in ("101", "0", "-3", "abc", "2.5", "²"):
        response = client.post(f"/search?k={bad}", data=upload(data))
        assert_error(response, 400, "bad_request", "k must be an integer from 1 to 100", bad)


def test_search_by_id_and_raw_body(shared):
    client, options, paths = shared
    image_id = image_id_of(options, paths[4])
    body = client.post("/search", json={"id": image_id, "k": 2}).get_json()
    assert body["query"]["id"] == image_id
    assert body["results"][0]["id"] == image_id and body["results"][0]["exact"]
    assert len(body["results"]) == 2
    raw = client.post("/search", data=paths[4].read_bytes(), content_type="image/png")
    assert raw.status_code == 200 and raw.get_json()["results"][0]["id"] == image_id


@pytest.mark.parametrize(
    "body, status, code, word",
    [
        ({"id": 999}, 404, "not_found", "999"),
        ({"id": "x"}, 400, "bad_request", "'x'"),
        ({"id": True}, 400, "bad_request", "True"),
        ({"id": 0}, 400, "bad_request", "0"),
        ({"id": 1, "url": "http://example.com/a.png"}, 400, "bad_request", "exactly one"),
        ({}, 400, "bad_request", "exactly one"),
        ([1, 2], 400, "bad_request", "JSON body"),
        ({"id": 1, "k": 500}, 400, "bad_request", "500"),
        ({"url": "ftp://example.com/a.png"}, 400, "url_refused", "http"),
        ({"url": 42}, 400, "url_refused", "42"),
    ],
)
def test_bad_json_searches(shared, body, status, code, word):
    client, _, _ = shared
    assert_error(client.post("/search", json=body), status, code, word)


def test_malformed_requests(shared):
    client, _, _ = shared
    assert_error(
        client.post("/search", data="{not json", content_type="application/json"), 400, "bad_request", "JSON"
    )
    text = client.post("/search", data=b"hello", content_type="text/plain")
    assert_error(text, 400, "bad_request", "text/plain")
    missing = client.post("/search", data={"file": (io.BytesIO(b"x"), "a.png")})
    assert_error(missing, 400, "bad_request", "'image'", "file")


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_images_get_their_status(shared, name):
    client, _, _ = shared
    data, reason = bad_images()[name]
    status = {"empty": 400, "not_image": 415, "truncated": 422, "bomb": 422}[reason]
    assert_error(client.post("/search", data=upload(data, name)), status, reason, name)
    assert_error(client.post("/images", data=upload(data, name)), status, reason, name)


def test_too_large_is_413(any_template, tmp_path, embedder):
    options, _ = copy_of(any_template, tmp_path, max_image_bytes=20_000)
    client = client_of(api.create_app(options, embedder=embedder))
    # Over the image limit but inside the request limit: the decoder refuses it.
    big = image_bytes(make_image(7, (150, 150)), "BMP")
    assert 20_000 < len(big) < 20_000 + api.MULTIPART_SLACK
    assert_error(client.post("/search", data=upload(big, "big.bmp")), 413, "too_large", "20000")
    # Over MAX_CONTENT_LENGTH: Flask refuses the body before anyone reads it.
    huge = os.urandom(200_000)
    assert_error(client.post("/search", data=upload(huge)), 413, "too_large", "larger than")
    assert_error(client.post("/images", data=upload(huge)), 413, "too_large")


# /images -------------------------------------------------------------------------------------


def test_image_metadata_file_and_thumbnail(shared):
    client, options, paths = shared
    image_id = image_id_of(options, paths[1])
    meta = client.get(f"/images/{image_id}").get_json()
    assert meta["id"] == image_id and meta["source"] == str(paths[1])
    assert meta["file_url"] == f"/images/{image_id}/file"
    file = client.get(meta["file_url"])
    assert file.status_code == 200 and file.mimetype == "image/png"
    assert file.data == paths[1].read_bytes()
    assert client.get(meta["file_url"], headers={"If-None-Match": file.headers["ETag"]}).status_code == 304
    thumb = client.get(f"/images/{image_id}/file?thumb=32")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.data)).size) == 32
    default = client.get(f"/images/{image_id}/file?thumb=1")
    assert Image.open(io.BytesIO(default.data)).size == (96, 72)  # never enlarged
    assert client.get(f"/images/{image_id}/file?thumb=0").data == paths[1].read_bytes()
    assert_error(client.get(f"/images/{image_id}/file?thumb=5000"), 400, "bad_request", "5000")


@pytest.mark.parametrize("path", ["/images/{}", "/images/{}/file"])
def test_unknown_and_bad_ids(shared, path):
    client, _, _ = shared
    assert_error(client.get(path.format(999)), 404, "not_found", "999")
    assert_error(client.get(path.format("abc")), 400, "bad_request", "'abc'")
    assert_error(client.get(path.format("-1")), 400, "bad_request", "-1")


def test_missing_stored_file_is_404(fresh):
    client, options, paths = fresh
    image_id = image_id_of(options, paths[0])
    meta = client.get(f"/images/{image_id}").get_json()
    (options.images_dir / meta["path"]).unlink()
    assert_error(client.get(f"/images/{image_id}/file"), 404, "not_found", "missing")


def test_add_image_is_indexed_at_once(fresh, embedder):
    client, options, _ = fresh
    data = image_bytes(make_image(500))
    response = client.post("/images", data=upload(data, "new.png", page_url="http://example.com/p"))
    assert response.status_code == 201
    added = response.get_json()
    assert added["created"] is True and added["url"] == f"/images/{added['id']}"
    assert added["image"]["source"] == "upload:new.png"
    assert added["image"]["page_url"] == "http://example.com/p"
    # The vector is in the saved index file, not only in this worker's memory.
    assert added["id"] in VectorIndex.load(options.index_path).ids().tolist()
    stats = client.get("/stats").get_json()
    assert (stats["images"], stats["vectors"], stats["pending"]) == (N_IMAGES + 1, N_IMAGES + 1, 0)
    hit = client.post("/search?k=1", data=upload(data)).get_json()["results"][0]
    assert hit["id"] == added["id"] and hit["exact"]
    again = client.post("/images", data=upload(data, "again.png"))
    assert again.status_code == 200
    assert again.get_json() | {"image": None} == {
        "id": added["id"],
        "created": False,
        "already_indexed": True,
        "match": "exact",
        "duplicate_of": None,
        "image": None,
        "url": f"/images/{added['id']}",
    }


def test_add_reports_a_duplicate_verdict(any_template, tmp_path, embedder):
    options, paths = copy_of(any_template, tmp_path)
    catalog = Catalog(options.catalog_url)
    # Thresholds that make the mirrored copy a duplicate and nothing else one (CNN scores
    # of the random test model are all near 0.99, so only an exact 1.0 is out of reach).
    catalog.set_thresholds(embedder.version, duplicate=0.5, similar=0.2, source="manual")
    catalog.close()
    client = client_of(api.create_app(options, embedder=embedder))
    mirrored = image_bytes(ImageOps.mirror(Image.open(paths[1])))
    body = client.post("/images", data=upload(mirrored, "mirror.png")).get_json()
    assert body["created"] and body["match"] == "duplicate" and body["already_indexed"]
    assert 1 <= body["duplicate_of"]["id"] <= N_IMAGES and body["duplicate_of"]["verdict"] == "duplicate"


def test_add_reports_no_match_below_the_threshold(any_template, tmp_path, embedder):
    options, _ = copy_of(any_template, tmp_path)
    catalog = Catalog(options.catalog_url)
    catalog.set_thresholds(embedder.version, duplicate=1.0, similar=1.0, source="manual")
    catalog.close()
    client = client_of(api.create_app(options, embedder=embedder))
    body = client.post("/images", data=upload(image_bytes(make_image(77)))).get_json()
    assert (body["created"], body["match"], body["already_indexed"], body["duplicate_of"]) == (
        True,
        None,
        False,
        None,
    )


def test_delete_removes_from_catalog_index_and_store(fresh):
    client, options, paths = fresh
    image_id = image_id_of(options, paths[3])
    stored = options.images_dir / client.get(f"/images/{image_id}").get_json()["path"]
    response = client.delete(f"/images/{image_id}")
    assert response.status_code == 200 and response.get_json()["deleted"]["id"] == image_id
    assert_error(client.get(f"/images/{image_id}"), 404, "not_found")
    assert not stored.exists()
    assert image_id not in VectorIndex.load(options.index_path).ids().tolist()
    results = client.post("/search", data=upload(paths[3].read_bytes())).get_json()["results"]
    assert image_id not in [r["id"] for r in results] and len(results) == N_IMAGES - 1
    assert_error(client.delete(f"/images/{image_id}"), 404, "not_found", str(image_id))
    assert_error(client.delete("/images/abc"), 400, "bad_request", "'abc'")


# search by URL -------------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/img_0002.png")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def web(tmp_path, shared):
    """A real HTTP server on 127.0.0.1 serving the indexed images and a text file."""
    _, _, paths = shared
    folder = tmp_path / "www"
    folder.mkdir()
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "page.html").write_text("<html>not an image</html>")
    (folder / "big.bin").write_bytes(os.urandom(300_000))
    handler = lambda *a, **kw: QuietHandler(*a, directory=str(folder), **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_search_refuses_loopback_by_default(shared, web):
    client, _, _ = shared
    response = client.post("/search", json={"url": f"{web}/img_0002.png"})
    assert_error(response, 400, "url_refused", "127.0.0.1", "TWICE_ALLOW_PRIVATE_URLS")


def test_url_search_and_add_when_private_urls_are_allowed(shared, web, embedder):
    _, options, paths = shared
    client = client_of(api.create_app(options, embedder=embedder, allow_private_urls=True))
    expected = image_id_of(options, paths[2])
    for url in (f"{web}/img_0002.png", f"{web}/redirect"):
        body = client.post("/search", json={"url": url, "k": 2}).get_json()
        assert body["results"][0]["id"] == expected and body["results"][0]["exact"]
        assert body["query"]["source"] == url
    assert_error(client.post("/search", json={"url": f"{web}/nope.png"}), 422, "fetch_failed", "404")
    assert_error(client.post("/search", json={"url": f"{web}/page.html"}), 415, "not_image")
    closed = "http://127.0.0.1:9/x.png"  # discard port: nothing listens
    assert_error(client.post("/search", json={"url": closed}), 422, "fetch_failed")
    small = client_of(
        api.create_app(
            options.with_overrides(max_image_bytes=100_000), embedder=embedder, allow_private_urls=True
        )
    )
    assert_error(small.post("/search", json={"url": f"{web}/big.bin"}), 413, "too_large")


def test_add_by_url(fresh, web, embedder):
    _, options, _ = fresh
    client = client_of(api.create_app(options, embedder=embedder, allow_private_urls=True))
    body = client.post("/images", json={"url": f"{web}/img_0002.png", "page_url": f"{web}/"}).get_json()
    assert body["created"] is False and body["match"] == "exact"  # these bytes are indexed already
    assert_error(client.post("/images", json={"page_url": "x"}), 400, "bad_request", "url")


# health, stats, readiness --------------------------------------------------------------------


def test_health_and_stats(shared, embedder):
    client, _, _ = shared
    health = client.get("/health")
    assert health.status_code == 200
    body = health.get_json()
    assert body["status"] == "ok" and body["model"]["version"] == embedder.version
    assert body["index"]["vectors"] == N_IMAGES and body["version"]
    stats = client.get("/stats").get_json()
    assert stats["images"] == stats["vectors"] == stats["originals"] == N_IMAGES
    assert stats["variants"] == 0 and stats["formats"] == {"PNG": N_IMAGES} and stats["ready"]


def test_no_index_yet_is_503_until_the_first_upload(tmp_path, embedder):
    options = make_options(tmp_path / "data")
    client = client_of(api.create_app(options, embedder=embedder))
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "not_ready"
    assert "no index yet" in health.get_json()["reason"]
    data = image_bytes(make_image(1))
    assert_error(client.post("/search", data=upload(data)), 503, "index_not_ready", "twice reindex")
    assert client.get("/stats").get_json()["ready"] is False
    assert client.post("/images", data=upload(data)).status_code == 201
    assert client.get("/health").status_code == 200
    assert client.post("/search", data=upload(data)).get_json()["results"][0]["exact"]


def test_a_model_that_cannot_load_is_503(tmp_path):
    options = make_options(tmp_path / "data", checkpoint=str(tmp_path / "missing.pt"))
    client = client_of(api.create_app(options))
    assert_error(client.get("/health"), 503, "model_not_ready", "missing.pt")
    assert_error(client.post("/search", data=upload(b"x")), 503, "model_not_ready")


def test_index_of_another_model_is_503_and_left_alone(tmp_path, embedder):
    options = make_options(tmp_path / "data")
    other = VectorIndex("some-other-model", embedder.dim)
    other.add(np.array([1]), np.ones((1, embedder.dim), np.float32) / np.sqrt(embedder.dim))
    other.save(options.index_path)
    before = options.index_path.read_bytes()
    client = client_of(api.create_app(options, embedder=embedder))
    assert "another model" in client.get("/health").get_json()["reason"]
    data = image_bytes(make_image(1))
    assert_error(client.post("/search", data=upload(data)), 503, "index_not_ready", "another model")
    assert_error(client.post("/images", data=upload(data)), 503, "index_not_ready")
    assert_error(client.delete("/images/1"), 503, "index_not_ready")
    assert options.index_path.read_bytes() == before


def test_a_replaced_index_is_reloaded_and_a_damaged_one_is_not_served(fresh, embedder):
    client, options, paths = fresh
    service = api.service_of(client.application)
    assert client.get("/health").get_json()["index"]["vectors"] == N_IMAGES
    good = options.index_path.read_bytes()
    atomic_write(options.index_path, good[: len(good) // 2])  # a damaged file, renamed in
    response = client.post("/search", data=upload(paths[0].read_bytes()))
    assert response.status_code == 200 and len(response.get_json()["results"]) == N_IMAGES
    assert service.reloads == 0
    # Another writer (a reindex) saves a bigger index: picked up on the next request.
    write_images(options.data_dir.parent / "more", 2, start=200)
    atomic_write(options.index_path, good)
    reindex([options.data_dir.parent / "more"], options, embedder, progress=False)
    assert client.get("/health").get_json()["index"]["vectors"] == N_IMAGES + 2
    assert service.reloads == 1
    assert FileStamp.of(options.index_path) == service._stamp


def test_two_workers_do_not_lose_each_others_uploads(fresh, embedder):
    _, options, _ = fresh
    a = SearchService(options, embedder)
    b = SearchService(options, embedder)
    a.open()
    b.open()  # both hold the index as it was
    first = a.add_bytes(image_bytes(make_image(601)), "a")
    second = b.add_bytes(image_bytes(make_image(602)), "b")
    saved = VectorIndex.load(options.index_path).ids().tolist()
    assert first["id"] in saved and second["id"] in saved and len(saved) == N_IMAGES + 2
    assert a.stats()["vectors"] == N_IMAGES + 2  # a reloaded b's save
    a.close()
    b.close()


def test_concurrent_searches_and_uploads(fresh):
    client, _, paths = fresh
    statuses: list[int] = []

    def search(i: int) -> None:
        for _ in range(3):
            statuses.append(client.post("/search?k=3", data=upload(paths[i].read_bytes())).status_code)

    def add(seed: int) -> None:
        statuses.append(client.post("/images", data=upload(image_bytes(make_image(seed)))).status_code)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=add, args=(700 + i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 9 + [201] * 2
    assert client.get("/stats").get_json()["vectors"] == N_IMAGES + 2


# errors and the document ---------------------------------------------------------------------


def test_unknown_routes_methods_and_internal_errors_are_json(shared, embedder):
    client, options, _ = shared
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.put("/images/1")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]

    def boom():
        raise RuntimeError("secret detail /etc/passwd")

    app = api.create_app(options, embedder=embedder)
    app.add_url_rule("/boom", "boom", boom)  # a bug in some view: the client sees no detail
    crashed = client_of(app).get("/boom")
    assert_error(crashed, 500, "internal")
    assert "secret" not in crashed.get_data(as_text=True)


def test_openapi_describes_every_route(shared):
    client, _, _ = shared
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    routes = set()
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint in ("static", "index_page"):
            continue
        path = rule.rule.replace("<image_id>", "{image_id}")
        routes |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented
    json.dumps(doc)  # plain JSON throughout
    refs = {m.group(1) for m in re.finditer(r'"#/components/schemas/(\w+)"', json.dumps(doc))}
    assert refs <= set(doc["components"]["schemas"])


# duplicate report -----------------------------------------------------------------------------


def test_duplicates_route_returns_the_report_paginated(fresh):
    client, options, paths = fresh
    same_pixels = image_bytes(Image.open(paths[3]), "PNG", compress_level=1)  # other bytes
    added = client.post("/images", data=upload(same_pixels, "copy.png")).get_json()
    original = image_id_of(options, paths[3])
    body = client.get("/duplicates?threshold=0.99999&per_page=5").get_json()
    assert [sorted(m["id"] for m in g["members"]) for g in body["groups"]] == [
        sorted([original, added["id"]])
    ]
    assert body["pagination"]["page"] == 1 and body["pagination"]["per_page"] == 5
    assert_error(client.get("/duplicates?threshold=2"), 400, "bad_request", "threshold")
    assert_error(client.get("/duplicates?per_page=0"), 400, "bad_request", "per_page")


def test_duplicates_route_without_an_index_is_503(tmp_path, embedder):
    app = api.create_app(make_options(tmp_path / "empty"), embedder=embedder)
    assert_error(client_of(app).get("/duplicates"), 503, "index_not_ready", "no index")
