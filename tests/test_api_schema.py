"""Schemathesis against /openapi.json: generated requests to every route never get a 5xx.

Skipped when schemathesis is not installed (it is a test-only dependency).
"""

from __future__ import annotations

from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from conftest import make_options  # noqa: E402
from imagegen import write_images  # noqa: E402
from twice.indexer import reindex  # noqa: E402
from twice.web import app as api  # noqa: E402


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

        check()
    # The generated requests got past validation too, not only 4xx answers.
    assert seen[("POST /search", 200)] and seen[("GET /stats", 200)], seen
