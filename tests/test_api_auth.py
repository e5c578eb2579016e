"""Who may write and who may ask: tokens and roles, the open-bind refusal, Host and Origin checks,
security headers, hidden paths, inference and management apart, /metrics, the audit trail, and
the requests that were 500s (issue 25). Real data dirs, real token files, the real app."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import make_options
from imagegen import image_bytes, make_image, write_images
from twice.indexer import reindex
from twice.options import Options
from twice.web import app as api
from twice.web.auth import ExposedWrites, TokenError, TokenFile, refuse_open_writes
from twice.web.listeners import listeners
from twice.web.serve import gunicorn_settings, settings_from_env

ENV_TOKEN = "twice_env-admin-token"


@pytest.fixture(scope="module")
def template(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("auth")
    options = make_options(root / "data")
    paths = write_images(root / "images", 3)
    reindex([root / "images"], options, embedder, progress=False)
    return options, paths


@pytest.fixture
def data(template, tmp_path):
    """A writable copy of the indexed data dir, with a read and a write token in its token file."""
    options, paths = template
    shutil.copytree(options.data_dir, tmp_path / "data")
    options = make_options(tmp_path / "data")
    tokens = TokenFile(options.tokens_path)
    return (
        options,
        paths,
        {role: tokens.create(name, role) for role, name in (("read", "reader"), ("write", "writer"))},
    )


def app_of(options, embedder, **overrides):
    app = api.create_app(options.with_overrides(**overrides), embedder=embedder)
    return app, app.test_client()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def upload(seed: int = 1) -> dict:
    return {"image": (io.BytesIO(image_bytes(make_image(1000 + seed))), "new.png")}  # not indexed yet


def error_of(response) -> tuple[int, str]:
    assert response.mimetype == "application/json", response.data[:300]
    return response.status_code, response.get_json()["error"]["code"]


def count_images(options) -> int:
    with sqlite3.connect(options.data_dir / "catalog.sqlite") as db:
        return db.execute("SELECT count(*) FROM images").fetchone()[0]


# tokens and roles ------------------------------------------------------------------------------


def test_every_write_needs_a_write_token(data, embedder):
    options, _, tokens = data
    app, client = app_of(options, embedder)
    before = count_images(options)
    writes = [("post", "/images", {"data": upload}), ("delete", "/images/1", {})]
    for method, path, extra in writes:
        for headers, expected in (
            ({}, (401, "unauthorized")),
            (bearer("twice_not-a-token"), (401, "invalid_token")),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, (401, "invalid_token")),
            (bearer(tokens["read"]), (403, "forbidden")),
        ):
            kwargs = {key: value() for key, value in extra.items()}
            response = getattr(client, method)(path, headers=headers, **kwargs)
            assert error_of(response) == expected, (method, path, headers)
            if expected[0] == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert count_images(options) == before  # nothing changed
    added = client.post("/images", data=upload(), headers=bearer(tokens["write"]))
    assert added.status_code == 201
    assert client.delete("/images/1", headers=bearer(tokens["write"])).status_code == 200
    message = client.post("/images", data=upload(2), headers=bearer(tokens["read"])).get_json()
    assert "token 'reader' has role read" in message["error"]["message"]
    api.service_of(app).close()


def test_env_token_is_admin_and_a_revoked_token_stops_at_once(data, embedder):
    options, _, tokens = data
    app, client = app_of(options, embedder, api_token=ENV_TOKEN)
    assert client.post("/images", data=upload(3), headers=bearer(ENV_TOKEN)).status_code == 201
    assert client.post("/images", data=upload(4), headers=bearer(tokens["write"])).status_code == 201
    TokenFile(options.tokens_path).revoke("writer")  # as `twice token revoke` in another process
    assert error_of(client.post("/images", data=upload(5), headers=bearer(tokens["write"]))) == (
        401,
        "invalid_token",
    )
    api.service_of(app).close()


def test_token_file_keeps_only_hashes(data):
    options, _, tokens = data
    text = options.tokens_path.read_text()
    assert tokens["write"] not in text and tokens["read"] not in text
    assert hashlib.sha256(tokens["write"].encode()).hexdigest() in text
    assert options.tokens_path.stat().st_mode & 0o077 == 0  # only the owner reads it
    with pytest.raises(TokenError, match="exists"):
        TokenFile(options.tokens_path).create("writer", "write")
    with pytest.raises(TokenError, match="'root'"):
        TokenFile(options.tokens_path).create("x", "root")


def test_without_any_token_only_this_machine_may_write(template, tmp_path, embedder):
    options, _ = template
    shutil.copytree(options.data_dir, tmp_path / "data")
    app, client = app_of(make_options(tmp_path / "data"), embedder)
    assert client.post("/images", data=upload(6)).status_code == 201  # 127.0.0.1: a local user
    far = client.post("/images", data=upload(7), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert error_of(far) == (401, "unauthorized")
    assert "twice token create" in far.get_json()["error"]["message"]
    proxied = client.post("/images", data=upload(8), headers={"X-Forwarded-For": "203.0.113.9"})
    assert error_of(proxied) == (401, "unauthorized")  # a local proxy forwarding someone else
    api.service_of(app).close()


def test_closed_reads_and_read_only(data, embedder):
    options, paths, tokens = data
    app, client = app_of(options, embedder, private_reads=True, read_only=True)
    query = {"image": (io.BytesIO(paths[0].read_bytes()), "q.png")}
    assert error_of(client.post("/search", data=query)) == (401, "unauthorized")
    query = {"image": (io.BytesIO(paths[0].read_bytes()), "q.png")}
    assert client.post("/search", data=query, headers=bearer(tokens["read"])).status_code == 200
    assert error_of(client.get("/images/1")) == (401, "unauthorized")
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    refused = client.post("/images", data=upload(9), headers=bearer(tokens["write"]))
    assert error_of(refused) == (403, "read_only")
    api.service_of(app).close()


# starting on an open address --------------------------------------------------------------------


@pytest.mark.parametrize("bind", ["0.0.0.0:8000", "[::]:8000", "192.168.1.20:8000", "myhost:8000"])
def test_open_bind_without_a_token_is_refused(tmp_path, bind):
    options = make_options(tmp_path / "data", bind=bind)
    with pytest.raises(ExposedWrites, match="twice token create.*TWICE_READ_ONLY"):
        refuse_open_writes(options)
    with pytest.raises(ExposedWrites, match=bind.rpartition(":")[0].strip("[]")):
        settings_from_env(
            {"TWICE_DATA_DIR": str(tmp_path / "data"), "TWICE_BIND": bind, "TWICE_LOG_DIR": "-"}
        )


def test_open_bind_is_fine_with_a_token_read_only_or_management_on_loopback(tmp_path):
    base = make_options(tmp_path / "data", bind="0.0.0.0:8000")
    refuse_open_writes(make_options(tmp_path / "data", bind="127.0.0.1:8000"))
    refuse_open_writes(base.with_overrides(api_token=ENV_TOKEN))
    refuse_open_writes(base.with_overrides(read_only=True))
    refuse_open_writes(
        base.with_overrides(
            inference_address="http://0.0.0.0:8080", management_address="http://127.0.0.1:8081"
        )
    )
    TokenFile(base.tokens_path).create("reader", "read")
    with pytest.raises(ExposedWrites):  # a read token does not make writes safe
        refuse_open_writes(base)
    TokenFile(base.tokens_path).create("writer", "write")
    refuse_open_writes(base)


def test_twice_serve_on_an_open_address_says_how_to_fix_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWICE_")}
    env["TWICE_DATA_DIR"] = str(tmp_path / "d")
    for args, extra in ((["--host", "0.0.0.0"], {}), ([], {"TWICE_BIND": "0.0.0.0:8765"})):
        done = subprocess.run(
            [sys.executable, "-m", "twice", "serve", "--log-dir", "-", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert "refusing to serve writes" in done.stderr and "twice token create" in done.stderr


# Host, Origin, headers ------------------------------------------------------------------------


def test_host_header_is_checked(data, embedder):
    options, _, _ = data
    app, client = app_of(options, embedder)
    assert client.get("/health").status_code == 200  # Host: localhost
    assert client.get("/health", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    rebound = client.get("/stats", headers={"Host": "attacker.example"})
    assert error_of(rebound) == (400, "host_not_allowed")
    app, client = app_of(options, embedder, allowed_hosts="search.example.org, .example.net")
    assert client.get("/health", headers={"Host": "search.example.org"}).status_code == 200
    assert client.get("/health", headers={"Host": "a.example.net:443"}).status_code == 200
    assert client.get("/health", headers={"Host": "localhost"}).status_code == 400  # the list is all
    app, client = app_of(options, embedder, bind="0.0.0.0:8000", api_token=ENV_TOKEN)
    assert client.get("/health", headers={"Host": "10.0.0.7:8000"}).status_code == 200  # an IP: no rebinding
    assert client.get("/health", headers={"Host": "evil.example"}).status_code == 400


def test_cross_origin_writes_are_refused_and_cors_is_off_by_default(data, embedder):
    options, _, tokens = data
    app, client = app_of(options, embedder)
    auth = bearer(tokens["write"])
    evil = client.post("/images", data=upload(10), headers={**auth, "Origin": "http://evil.example"})
    assert error_of(evil) == (403, "cross_origin")
    site = client.post("/images", data=upload(11), headers={**auth, "Sec-Fetch-Site": "cross-site"})
    assert error_of(site) == (403, "cross_origin")
    same = client.post("/images", data=upload(12), headers={**auth, "Origin": "http://localhost"})
    assert same.status_code == 201
    assert (
        "Access-Control-Allow-Origin"
        not in client.get("/health", headers={"Origin": "http://a.example"}).headers
    )
    app, client = app_of(options, embedder, allowed_origins="https://app.example")
    allowed = client.post("/images", data=upload(13), headers={**auth, "Origin": "https://app.example"})
    assert (
        allowed.status_code == 201 and allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    )
    preflight = client.options(
        "/images", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_security_headers_on_the_page_and_the_api(data, embedder):
    options, _, _ = data
    _, client = app_of(options, embedder)
    for path in ("/", "/health", "/static/app.js"):
        headers = client.get(path).headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Frame-Options"] == "DENY"
    page = client.get("/").get_data(as_text=True)
    assert "<script>" not in page and "<style>" not in page  # nothing inline for the CSP to allow


def test_openapi_names_the_bearer_scheme(data, embedder):
    options, _, _ = data
    _, client = app_of(options, embedder)
    doc = client.get("/openapi.json").get_json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["paths"]["/images"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/images/{image_id}"]["delete"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/search"]["post"]  # reads are open by default
    assert {"401", "403"} <= set(doc["paths"]["/images"]["post"]["responses"])


# paths -------------------------------------------------------------------------------------------


def test_server_paths_are_hidden_off_loopback(data, embedder):
    options, paths, tokens = data
    query = paths[1].read_bytes()

    def first_hit(client) -> dict:
        return client.post("/search", data={"image": (io.BytesIO(query), "q.png")}).get_json()["results"][0]

    _, local = app_of(options, embedder)
    assert first_hit(local)["source"] == str(paths[1]) and "path" in first_hit(local)
    _, public = app_of(options, embedder, bind="0.0.0.0:8000")
    hit = first_hit(public)
    assert "path" not in hit and hit["source"] == paths[1].name
    record = public.get(f"/images/{hit['id']}").get_json()
    assert "path" not in record and record["source"] == paths[1].name
    health = public.get("/health").get_data(as_text=True)
    assert str(options.data_dir) not in health
    _, shown = app_of(options, embedder, bind="0.0.0.0:8000", expose_paths="yes")
    assert first_hit(shown)["source"] == str(paths[1])
    _, hidden = app_of(options, embedder, expose_paths="no")
    assert "path" not in first_hit(hidden)
    with pytest.raises(ValueError, match="expose_paths.*'sometimes'"):
        app_of(options, embedder, expose_paths="sometimes")


# inference and management apart, /metrics ----------------------------------------------------------


def test_inference_and_management_apart(data, embedder, tmp_path):
    options, paths, tokens = data
    config = tmp_path / "config.properties"
    config.write_text(
        "# as TorchServe's\ninference_address=http://127.0.0.1:8080\nmanagement_address=http://127.0.0.1:8081\n"
    )
    split = Options.from_env({"TWICE_CONFIG": str(config), "TWICE_DATA_DIR": str(options.data_dir)})
    assert gunicorn_settings(split, log_dir="-")["bind"] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    app = api.create_app(
        make_options(options.data_dir, inference_address=split.inference_address,
                     management_address=split.management_address),
        embedder=embedder,
    )  # fmt: skip
    client = app.test_client()
    inference, management = "http://127.0.0.1:8080", "http://127.0.0.1:8081"
    auth = bearer(tokens["write"])
    query = {"image": (io.BytesIO(paths[0].read_bytes()), "q.png")}
    assert client.post("/search", data=query, base_url=inference).status_code == 200
    assert client.get("/", base_url=inference).status_code == 200
    wrong = client.post("/images", data=upload(20), headers=auth, base_url=inference)
    assert error_of(wrong) == (404, "not_found") and "management" in wrong.get_json()["error"]["message"]
    assert client.get("/stats", base_url=inference).status_code == 404
    assert client.post("/images", data=upload(20), headers=auth, base_url=management).status_code == 201
    query = {"image": (io.BytesIO(paths[0].read_bytes()), "q.png")}
    assert client.post("/search", data=query, base_url=management).status_code == 404
    assert client.get("/health", base_url=management).status_code == 200

    metrics = client.get("/metrics", base_url=management)
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    text = metrics.get_data(as_text=True)
    assert 'twice_http_requests_total{method="POST",route="/search",status="200"} 1.0' in text
    assert 'twice_http_requests_total{method="POST",route="/search",status="404"} 1.0' in text
    assert 'twice_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/search"} 2.0' in text
    assert "twice_index_vectors 4.0" in text and "twice_catalog_images 4.0" in text
    assert client.get("/metrics", base_url=inference).status_code == 404
    api.service_of(app).close()


def test_a_config_file_with_an_unknown_key_is_refused(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:8080\nnumber_of_netty_threads=4\n")
    with pytest.raises(ValueError, match="line 2.*number_of_netty_threads"):
        Options.from_env({"TWICE_CONFIG": str(config)})
    with pytest.raises(ValueError, match="management_address.*different ports"):
        listeners(Options(inference_address="0.0.0.0:8080", management_address="127.0.0.1:8080"))


# the audit trail -------------------------------------------------------------------------------


def test_every_write_is_audited_by_token_name(data, embedder):
    options, _, tokens = data
    app, client = app_of(options, embedder)
    added = client.post("/images", data=upload(30), headers=bearer(tokens["write"])).get_json()
    record = client.get(f"/images/{added['id']}").get_json()
    assert record["added_by"]["token"] == "writer" and record["added_by"]["client"] == "127.0.0.1"
    assert record["added_by"]["at"].startswith(record["added_at"][:16])
    assert client.get("/images/1").get_json()["added_by"] is None  # indexed by a reindex
    assert client.delete(f"/images/{added['id']}", headers=bearer(tokens["write"])).status_code == 200
    api.service_of(app).close()
    catalog = options.data_dir / "catalog.sqlite"
    with sqlite3.connect(catalog) as db:
        rows = db.execute("SELECT action, image_id, sha256, created, token, client FROM audit").fetchall()
    sha = added["image"]["sha256"]
    assert rows == [
        ("add", added["id"], sha, 1, "writer", "127.0.0.1"),
        ("delete", added["id"], sha, 1, "writer", "127.0.0.1"),
    ]
    for path in options.data_dir.rglob("*"):  # the token itself is nowhere in the data dir
        if path.is_file():
            assert tokens["write"].encode() not in path.read_bytes(), path


# 500s that are 4xx now -------------------------------------------------------------------------


def test_huge_ids_and_deep_json_are_400(data, embedder):
    options, _, tokens = data
    _, client = app_of(options, embedder)
    huge = client.post("/search", json={"id": 10**30})
    assert (
        error_of(huge) == (400, "bad_request")
        and "9223372036854775807" in huge.get_json()["error"]["message"]
    )
    assert error_of(client.post("/search", json={"id": 2**63})) == (400, "bad_request")
    assert error_of(client.post("/search", json={"id": 2**63 - 1})) == (404, "not_found")
    deep = "[" * 100_000 + "]" * 100_000
    response = client.post("/search", data=deep, content_type="application/json")
    assert error_of(response) == (400, "bad_request") and "deep" in response.get_json()["error"]["message"]
    deep_object = '{"id": ' + deep + "}"
    headers = bearer(tokens["write"])
    added = client.post("/images", data=deep_object, content_type="application/json", headers=headers)
    assert error_of(added)[0] == 400


def test_json_bodies_are_capped_far_below_uploads(data, embedder):
    options, _, tokens = data
    _, client = app_of(options, embedder, max_json_bytes=4096)
    big = b'{"url": "http://example.org/' + b"a" * 8000 + b'"}'
    response = client.post("/search", data=big, content_type="application/json")
    assert error_of(response) == (413, "too_large") and "4096" in response.get_json()["error"]["message"]
    headers = bearer(tokens["write"])
    assert (
        error_of(client.post("/images", data=big, content_type="application/json", headers=headers))[0] == 413
    )
    # An image upload of the same size is fine: the JSON cap is for JSON.
    query = {"image": (io.BytesIO(image_bytes(make_image(1, (200, 200)), "BMP")), "q.bmp")}
    assert client.post("/search", data=query).status_code == 200
