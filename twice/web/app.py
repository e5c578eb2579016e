"""The twice web service: a Flask application factory, thin routes over ``twice.web.service``.

Run it with ``twice serve`` or ``gunicorn twice.web.app:app`` (``gunicorn api:app`` from a
checkout; settings in gunicorn.conf.py). Each
worker process builds one ``SearchService`` (one model, one index) on its first request and
reuses it across requests and threads. Every error is a JSON body
``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status, never a stack trace.

Before a view runs, ``twice.web.access`` checks the Host header, the listener (inference or
management), the bearer token and its role, the origin of a write, the size of a JSON body and
the client's rate; every answer carries security headers, and ``/metrics`` counts it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path, PurePath

from flask import Flask, Response, current_app, g, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from twice.imageio import ImageError
from twice.indexer import IndexFileError, IndexMismatchError
from twice.library import LibraryError
from twice.options import Options
from twice.search import MAX_K, build_report
from twice.version import __version__
from twice.web import openapi
from twice.web.access import AccessPolicy, Refusal, Rule, client_address, rule
from twice.web.limits import Limited, SearchSlots
from twice.web.listeners import INFERENCE, MANAGEMENT
from twice.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from twice.web.metrics import Metrics
from twice.web.openapi import documented
from twice.web.schemas import DEFAULT_K, DEFAULT_THUMB, MAX_PER_PAGE
from twice.web.service import (
    THUMB_SIZES,
    BadRequest,
    NotReady,
    SearchService,
    check_id,
    http_status,
)

LOG = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MULTIPART_SLACK = 64 * 1024  # form boundaries and fields around the image bytes
SERVICE_KEY = "twice"
URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)

INFERENCE_ONLY = frozenset({INFERENCE})
MANAGEMENT_ONLY = frozenset({MANAGEMENT})
# Endpoints without a rule of their own: Flask's static files (the page's script and style).
OPEN_ENDPOINTS = {"static": Rule(None, INFERENCE_ONLY)}

# ImageError.reason -> HTTP status: the client sent something we cannot use.
IMAGE_ERROR_STATUS = {
    "empty": 400,
    "too_large": 413,
    "not_image": 415,
    "truncated": 422,
    "bomb": 422,
    "unreadable": 422,
}

MIMETYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}

TRUE_WORDS = ("1", "true", "yes", "on")


def create_app(
    options: Options | None = None,
    service: SearchService | None = None,
    *,
    embedder=None,
    allow_private_urls: bool | None = None,
) -> Flask:
    """Build the Flask app. Cheap: the model and index load on the first request that needs them.

    ``allow_private_urls`` (default: ``options.allow_private_urls``) lets ``{"url": ...}``
    fetch from loopback and private networks; keep it off on a public service.
    """
    options = options or Options.from_env()
    if service is None:
        if allow_private_urls is None:
            allow_private_urls = options.allow_private_urls
        service = SearchService(options, embedder, allow_private_urls, options.fetch_timeout)
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = options.max_image_bytes + MULTIPART_SLACK
    app.json.sort_keys = False
    app.extensions[SERVICE_KEY] = Parts(
        service, AccessPolicy(options), Metrics(service.stats), SearchSlots(options.max_searches)
    )
    if options.proxy_hops:  # the client address (limits, audit) from the proxies' X-Forwarded-*
        hops = options.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    _register_checks(app)
    _register_routes(app)
    _register_errors(app)
    return app


class Parts:
    """What one app holds: the service, the access checks, its metrics, its search slots."""

    def __init__(self, service: SearchService, policy: AccessPolicy, metrics: Metrics, slots: SearchSlots):
        self.service, self.policy, self.metrics, self.slots = service, policy, metrics, slots


def parts_of(app: Flask) -> Parts:
    return app.extensions[SERVICE_KEY]


def service_of(app: Flask) -> SearchService:
    return parts_of(app).service


def warm_up(app: Flask) -> None:
    """Load the model and index now (gunicorn calls this in each worker before requests)."""
    service_of(app).open()


# request parsing -----------------------------------------------------------------------------


def error_body(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def parse_int(name: str, raw: object, low: int, high: int) -> int:
    """An integer parameter from a query string, form field or JSON value, range-checked."""
    if isinstance(raw, bool | float):
        value = None
    elif isinstance(raw, int):
        value = raw
    else:
        value = ascii_int(str(raw).strip(), digits=11)
    if value is None or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return value


def parse_float(name: str, raw: str) -> float:
    """A score threshold from a query string: a number from -1 to 1."""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not -1.0 <= value <= 1.0:
        raise BadRequest(f"{name} must be a number from -1 to 1, got {raw!r}")
    return value


def ascii_int(text: str, digits: int) -> int | None:
    """``int(text)`` for plain ASCII decimals of at most ``digits`` digits, else None."""
    body = text[1:] if text.startswith("-") else text
    if not (body.isascii() and body.isdecimal()) or len(body) > digits:
        return None
    return int(text)


def parse_id(raw: object) -> int:
    if isinstance(raw, str):
        value = ascii_int(raw.strip(), digits=18)
        if value is None:
            raise BadRequest(f"id must be a positive integer, got {raw!r}")
        raw = value
    return check_id(raw)


def capped_body() -> bytes:
    """The request body, refused with 413 past ``request.max_content_length``, also when streamed."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and len(data) >= limit:
        request.stream.read(1)  # werkzeug stops quietly at the cap: a byte more raises its 413
    return data


def json_body() -> dict:
    try:
        body = json.loads(capped_body())
    except RecursionError:  # nested deeper than Python's stack: no document of ours is
        raise BadRequest("the JSON body nests too deeply") from None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest('the JSON body must be an object such as {"url": "https://..."} or {"id": 3}')
    return body


def requested_k(body: dict | None = None) -> int:
    raw = request.args.get("k")
    if raw is None and body is not None:
        raw = body.get("k")
    if raw is None:
        raw = request.form.get("k")
    return DEFAULT_K if raw is None else parse_int("k", raw, 1, MAX_K)


def uploaded_image() -> tuple[bytes, str]:
    """The bytes and file name of the multipart field ``image``."""
    upload = request.files.get("image")
    if upload is None:
        fields = sorted(set(request.files) | set(request.form))
        raise BadRequest(f"multipart field 'image' is missing (got fields {fields})")
    return upload.read(), upload.filename or "upload"


def without_paths(value: object) -> object:
    """``value`` without server file paths: no ``path`` fields, a file ``source`` by name only."""
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if not isinstance(value, dict):
        return value
    public = {}
    for key, item in value.items():
        if key == "path":
            continue
        if key == "source" and isinstance(item, str) and not URL_SCHEME.match(item):
            item = PurePath(item).name or item
        public[key] = without_paths(item)
    return public


def answer(body: dict, status: int = 200) -> tuple[Response, int]:
    """A JSON answer, with server paths taken out unless this service shows them."""
    if not parts_of_current().policy.expose_paths:
        body = without_paths(body)
    return jsonify(body), status


def parts_of_current() -> Parts:
    return parts_of(current_app)


def with_links(result: dict) -> dict:
    """Add the URLs a browser needs to show a hit."""
    image_id = result["id"]
    return {
        **result,
        "url": f"/images/{image_id}",
        "file_url": f"/images/{image_id}/file",
        "thumb_url": f"/images/{image_id}/file?thumb={DEFAULT_THUMB}",
    }


# checks before and after every request ---------------------------------------------------------


def rule_of(app: Flask) -> Rule:
    """The access rule of the request's view (no view: anyone may get the 404)."""
    if request.url_rule is None:
        return Rule(None)
    if request.endpoint in OPEN_ENDPOINTS:
        return OPEN_ENDPOINTS[request.endpoint]
    return getattr(app.view_functions[request.endpoint], "access", Rule())


def _register_checks(app: Flask) -> None:
    parts = parts_of(app)

    @app.before_request
    def check_access():
        g.started = time.perf_counter()
        g.token = parts.policy.check(request, rule_of(app))

    @app.after_request
    def decorate(response: Response) -> Response:
        parts.policy.decorate(request, response)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("started", time.perf_counter())
        parts.metrics.observe(route, request.method, response.status_code, time.perf_counter() - started)
        return response


def writer() -> tuple[str, str]:
    """Who is writing, for the audit trail: the token's name (never the token) and the address."""
    token = g.get("token")
    return (token.name if token is not None else "-"), client_address(request)


# routes --------------------------------------------------------------------------------------


def _register_routes(app: Flask) -> None:
    parts = parts_of(app)
    service = parts.service

    @app.get("/")
    @rule(None, INFERENCE_ONLY)
    def index_page():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.post("/search")
    @rule("read", INFERENCE_ONLY, limit="search")
    @documented(openapi.SEARCH)
    def search():
        try:
            with parts.slots.hold():
                response = run_search(service)
        except Limited as exc:
            raise Refusal(503, "busy", exc.message, {"Retry-After": str(exc.retry_after)}) from None
        response["results"] = [with_links(hit) for hit in response["results"]]
        return answer(response)

    @app.post("/images")
    @rule("write", MANAGEMENT_ONLY, limit="images")
    @documented(openapi.ADD_IMAGE)
    def add_image():
        if request.is_json:
            body = json_body()
            url = body.get("url")
            if not isinstance(url, str):
                raise BadRequest(f'JSON body needs "url": a string, got {url!r}')
            data, source, page_url = service.fetch(url), url, body.get("page_url")
        else:
            data, name = uploaded_image()
            source = request.form.get("source") or f"upload:{name}"
            page_url = request.form.get("page_url")
        if page_url is not None and not isinstance(page_url, str):
            raise BadRequest(f"page_url must be a string, got {page_url!r}")
        added = service.add_bytes(data, source, page_url=page_url or None)
        service.record_write("add", added["image"], added["created"], *writer())
        added["url"] = f"/images/{added['id']}"
        return answer(added, 201 if added["created"] else 200)

    @app.get("/images/<image_id>")
    @rule("read", limit="images")
    @documented(openapi.GET_IMAGE)
    def get_image(image_id: str):
        row = service.get(parse_id(image_id))
        return answer({**with_links(row.to_dict()), "added_by": service.added_by(row)})

    @app.get("/images/<image_id>/file")
    @rule("read", limit="images")
    @documented(openapi.GET_IMAGE_FILE)
    def get_image_file(image_id: str):
        row = service.get(parse_id(image_id))
        thumb = request.args.get("thumb")
        if thumb is None or thumb.lower() in ("0", "false", "no", "off"):
            path = service.file_path(row)
            mimetype = MIMETYPES.get(row.format, "application/octet-stream")
            response = send_file(path, mimetype=mimetype, etag=row.sha256, max_age=86400, conditional=True)
            return response
        size = DEFAULT_THUMB if thumb.lower() in TRUE_WORDS else parse_int("thumb", thumb, *THUMB_SIZES)
        response = Response(service.thumbnail(row, size), mimetype="image/jpeg")
        response.set_etag(f"{row.sha256}-{size}")
        response.cache_control.max_age = 86400
        return response.make_conditional(request)

    @app.delete("/images/<image_id>")
    @rule("write", MANAGEMENT_ONLY, limit="images")
    @documented(openapi.DELETE_IMAGE)
    def delete_image(image_id: str):
        row = service.remove(parse_id(image_id))
        service.record_write("delete", row.to_dict(), True, *writer())
        return answer({"deleted": row.to_dict()})

    @app.get("/health")
    @rule(None)
    @documented(openapi.HEALTH)
    def health():
        facts = service.health()
        return answer(facts, 200 if facts["status"] == "ok" else 503)

    @app.get("/stats")
    @rule("read", MANAGEMENT_ONLY)
    @documented(openapi.STATS)
    def stats():
        return answer(service.stats())

    @app.get("/metrics")
    @rule("read", MANAGEMENT_ONLY)
    @documented(openapi.METRICS)
    def metrics():
        return Response(parts.metrics.exposition(), mimetype=None, content_type=METRICS_CONTENT_TYPE)

    @app.get("/duplicates")
    @rule("read", INFERENCE_ONLY)
    @documented(openapi.DUPLICATES)
    def duplicates():
        args = request.args
        try:
            report = build_report(
                service.options,
                model_version=service.embedder.version,
                shipped=service.embedder.shipped_thresholds,
                embedder=lambda: service.embedder,
                threshold=parse_float("threshold", args["threshold"]) if "threshold" in args else None,
                include_variants=args.get("include_variants", "").lower() in TRUE_WORDS,
                page=parse_int("page", args.get("page", 1), 1, 10**9),
                per_page=parse_int("per_page", args.get("per_page", 50), 1, MAX_PER_PAGE),
            )
        except (IndexFileError, IndexMismatchError) as exc:  # before ValueError: a subclass
            raise NotReady(str(exc)) from exc
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        return answer(report)

    @app.get("/openapi.json", endpoint="openapi")
    @rule(None)
    @documented(openapi.OPENAPI)
    def openapi_json():
        private = service.options.private_reads
        return jsonify(openapi.openapi_document(app, request.host_url.rstrip("/"), __version__, private))


def run_search(service: SearchService) -> dict:
    """The search a request asks for: an upload, a raw image body, or JSON ``url`` / ``id``."""
    if "image" in request.files or request.mimetype == "multipart/form-data":
        data, name = uploaded_image()
        return service.search_bytes(data, requested_k(), source=name)
    if request.mimetype.startswith("image/"):  # curl --data-binary @photo.jpg
        return service.search_bytes(request.get_data(), requested_k(), source="<body>")
    if request.is_json:
        body = json_body()
        k = requested_k(body)
        if ("url" in body) == ("id" in body):
            raise BadRequest('give exactly one of "url" or "id" in the JSON body')
        if "url" in body:
            return service.search_url(body["url"], k)
        return service.search_id(parse_id(body["id"]), k)
    raise BadRequest(
        f'send multipart/form-data with an \'image\' file, or JSON {{"url"}} or {{"id"}};'
        f" got content type {request.mimetype or 'none'!r}"
    )


def _register_errors(app: Flask) -> None:
    @app.errorhandler(LibraryError)
    def service_error(exc: LibraryError):
        body, status = error_body(http_status(exc), exc.code, exc.message)
        body.headers.update(getattr(exc, "headers", {}))
        return body, status

    @app.errorhandler(ImageError)
    def image_error(exc: ImageError):
        return error_body(IMAGE_ERROR_STATUS.get(exc.reason, 422), exc.reason, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = request.max_content_length
            return error_body(413, "too_large", f"request body larger than {limit} bytes")
        code = (exc.name or "error").lower().replace(" ", "_")
        response = exc.get_response()
        body, status = error_body(exc.code or 500, code, exc.description or exc.name)
        if "Allow" in response.headers:  # 405 keeps telling the client what is allowed
            body.headers["Allow"] = response.headers["Allow"]
        return body, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        LOG.exception("unhandled error on %s %s", request.method, request.path)
        return error_body(500, "internal", "internal server error (details are in the server log)")


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    """``api.app`` for gunicorn, built on first access so importing api.py stays cheap."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
