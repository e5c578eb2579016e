"""The OpenAPI document against the app: schemathesis' generated requests to every route never
get a 5xx and their responses conform; the document keeps the operations and statuses it had when
it was written by hand; real responses carry no field the document does not name.

Skipped when schemathesis is not installed (it is a test-only dependency).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from urllib.parse import quote

import pytest

schemathesis = pytest.importorskip("schemathesis")
jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis' own validator
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import make_options  # noqa: E402
from imagegen import image_bytes, write_images  # noqa: E402
from twice.augment import make_synthetic_image  # noqa: E402
from twice.indexer import reindex  # noqa: E402
from twice.web import app as api  # noqa: E402

CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]

# The document as it was written by hand (before the models): operation -> statuses, parameters;
# since issue 25, writes also answer 401/403 (bearer token) and rate-limited routes 429.
HAND_WRITTEN = {
    ("POST", "/search"): ({200, 400, 404, 413, 415, 422, 429, 503}, {("k", "query", False)}),
    ("POST", "/images"): ({200, 201, 400, 401, 403, 413, 415, 422, 429, 503}, set()),
    ("GET", "/images/{image_id}"): ({200, 400, 404, 429}, {("image_id", "path", True)}),
    ("DELETE", "/images/{image_id}"): ({200, 400, 401, 403, 404, 429, 503}, {("image_id", "path", True)}),
    ("GET", "/images/{image_id}/file"): (
        {200, 304, 400, 404, 422, 429},
        {("image_id", "path", True), ("thumb", "query", False)},
    ),
    ("GET", "/health"): ({200, 503}, set()),
    ("GET", "/duplicates"): (
        {200, 400, 503},
        {(name, "query", False) for name in ("threshold", "include_variants", "page", "per_page")},
    ),
    ("GET", "/stats"): ({200}, set()),
    ("GET", "/metrics"): ({200}, set()),
    ("GET", "/openapi.json"): ({200}, set()),
}


@pytest.fixture(scope="module")
def app_schema(tmp_path_factory, embedder):
    """The schema as the running app serves it, over a small real index (URL fetches refused)."""
    root = tmp_path_factory.mktemp("schema")
    options = make_options(root / "data")
    write_images(root / "images", 4)
    reindex([root / "images"], options, embedder, progress=False)
    app = api.create_app(options, embedder=embedder, allow_private_urls=False)
    yield schemathesis.openapi.from_wsgi("/openapi.json", app)
    api.service_of(app).close()


def test_no_server_errors(app_schema):
    # schemathesis' own pytest plugin does not run under this pytest: drive hypothesis here.
    operations = [result.ok() for result in app_schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    seen: Counter = Counter()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests on every run: a failure is reproducible
            database=None,
        )
        def check(case) -> None:
            response = case.call()
            seen[(f"{case.method} {case.path}", response.status_code)] += 1
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text[:500]}"
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"code", "message"}, where
            case.validate_response(response, checks=CONFORMANCE)  # documented status and body

        check()
    # The generated requests got past validation too, not only 4xx answers.
    assert seen[("POST /search", 200)] and seen[("GET /stats", 200)], seen


# the document --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, embedder):
    """A client over a small real index of its own, and the document it serves."""
    root = tmp_path_factory.mktemp("served")
    options = make_options(root / "data")
    paths = write_images(root / "images", 4)
    reindex([root / "images"], options, embedder, progress=False)
    app = api.create_app(options, embedder=embedder, allow_private_urls=False)
    client = app.test_client()
    yield client, client.get("/openapi.json").get_json(), paths
    api.service_of(app).close()


def test_operations_statuses_and_parameters_are_the_hand_written_ones(served):
    _, doc, _ = served
    assert doc["openapi"] == "3.1.0"
    operations = {
        (method.upper(), path): (
            {int(status) for status in operation["responses"]},
            {(p["name"], p["in"], p["required"]) for p in operation.get("parameters", [])},
        )
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    }
    assert operations == HAND_WRITTEN
    bodies = {
        (method.upper(), path): set(operation["requestBody"]["content"])
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    }
    both = {"multipart/form-data", "application/json"}
    assert bodies == {("POST", "/search"): both, ("POST", "/images"): both}


def closed(schema):
    """``schema`` with ``additionalProperties: false`` wherever it lists properties."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def assert_documented(doc: dict, method: str, path: str, response) -> None:
    """The response's JSON fits its documented schema with no field the document leaves out."""
    operation = doc["paths"][path][method.lower()]
    reply = operation["responses"][str(response.status_code)]
    schema = reply["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator(
        {**schema, "components": closed(doc["components"])}, validate_formats=False
    )
    errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(response.get_json())]
    assert not errors, f"{method} {path} {response.status_code}: {errors[:5]}"


def test_every_field_a_route_sends_is_documented(served):
    client, doc, paths = served
    original = paths[0].read_bytes()
    copy = image_bytes(Image.open(paths[0]), "PNG", compress_level=1)  # same pixels, other bytes
    sent = []

    def check(method: str, path: str, response, template: str | None = None) -> None:
        assert_documented(doc, method, template or path, response)
        sent.append((method, template or path, response.status_code))

    check("POST", "/search", client.post("/search", data={"image": (io.BytesIO(original), "a.png")}))
    scene = make_synthetic_image(3, 0, (480, 360))
    stored = client.post("/images", data={"image": (io.BytesIO(image_bytes(scene, "PNG")), "scene.png")})
    tilted = image_bytes(scene.rotate(-10, expand=True), "PNG")
    verified = client.post("/search", data={"image": (io.BytesIO(tilted), "tilted.png")})
    check("POST", "/search", verified)
    top = verified.get_json()["results"][0]
    assert top["id"] == stored.get_json()["id"] and "verify" in top["evidence"]["decided_by"]
    added = client.post("/images", data={"image": (io.BytesIO(copy), "copy.png"), "source": "test"})
    check("POST", "/images", added)
    assert added.status_code == 201 and added.get_json()["match"] == "duplicate"
    image_id = added.get_json()["id"]
    again = client.post("/images", data={"image": (io.BytesIO(copy), "copy.png")})
    check("POST", "/images", again)
    found = client.post("/search", json={"id": image_id, "k": 3})
    check("POST", "/search", found)
    assert found.get_json()["results"][0]["evidence"]["hash"] is not None  # the full evidence
    check("GET", f"/images/{image_id}", client.get(f"/images/{image_id}"), "/images/{image_id}")
    check("GET", "/health", client.get("/health"))
    check("GET", "/stats", client.get("/stats"))
    report = client.get("/duplicates?threshold=0.99999&page=1&per_page=5")
    check("GET", "/duplicates", report)
    assert report.get_json()["groups"][0]["members"][1]["evidence"]["hash"] is not None
    check("GET", "/duplicates", client.get("/duplicates?include_variants=true"))
    check("GET", "/images/{image_id}", client.get("/images/0"))
    deleted = client.delete(f"/images/{image_id}")
    check("DELETE", f"/images/{image_id}", deleted, "/images/{image_id}")
    assert {status for _, _, status in sent} == {200, 201, 400}, sent


def test_a_field_missing_from_the_document_is_caught(served):
    """The check above can fail: a response with one field the document does not name."""
    client, doc, _ = served
    response = client.get("/stats")
    response.set_data(json.dumps({**response.get_json(), "surprise": 1}))
    with pytest.raises(AssertionError, match="surprise"):
        assert_documented(doc, "GET", "/stats", response)


# beyond the document: any JSON, any id (issue 25 found 500s there) -----------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.integers(min_value=2**62, max_value=2**65)  # around SQLite's int64 edge
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
REQUEST_BODIES = (
    st.fixed_dictionaries({"id": JSON_VALUES}, optional={"k": JSON_VALUES})
    | st.fixed_dictionaries({"url": JSON_VALUES}, optional={"k": JSON_VALUES, "page_url": JSON_VALUES})
    | JSON_VALUES
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("fuzz")
    options = make_options(root / "data", search_rate="", images_rate="")
    write_images(root / "images", 3)
    reindex([root / "images"], options, embedder, progress=False)
    app = api.create_app(options, embedder=embedder, allow_private_urls=False)
    yield app.test_client()
    api.service_of(app).close()


def test_any_json_body_is_answered_without_a_5xx(fuzzed):
    @given(body=REQUEST_BODIES, route=st.sampled_from(["/search", "/images"]))
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(body, route) -> None:
        response = fuzzed.post(route, data=json.dumps(body), content_type="application/json")
        assert response.status_code < 500, (route, body, response.get_data(as_text=True)[:300])
        assert set(response.get_json()["error"]) == {"code", "message"}

    check()


def test_any_id_in_the_path_is_answered_without_a_5xx(fuzzed):
    @given(
        image_id=st.text(min_size=1, max_size=40).filter(lambda t: "/" not in t and t not in (".", ".."))
        | st.integers(min_value=-(2**70), max_value=2**70).map(str),
        suffix=st.sampled_from(["", "/file", "/file?thumb=1"]),
    )
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(image_id, suffix) -> None:
        path = "/images/" + quote(image_id, safe="") + suffix
        for response in (fuzzed.get(path), fuzzed.delete(path.partition("?")[0].removesuffix("/file"))):
            assert response.status_code < 500, (path, response.get_data(as_text=True)[:300])

    check()
