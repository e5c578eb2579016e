"""The twice web service: a Flask application factory, thin routes over ``twice.web.service``.

Run it with ``twice serve`` or ``gunicorn twice.web.app:app`` (``gunicorn api:app`` from a
checkout; settings in gunicorn.conf.py). Each
worker process builds one ``SearchService`` (one model, one index) on its first request and
reuses it across requests and threads. Every error is a JSON body
``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status, never a stack trace.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import HTTPException

from twice.imageio import ImageError
from twice.indexer import IndexFileError, IndexMismatchError
from twice.library import LibraryError
from twice.options import Options
from twice.search import MAX_K, build_report
from twice.version import __version__
from twice.web import openapi
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
    app.extensions[SERVICE_KEY] = service
    _register_routes(app)
    _register_errors(app)
    return app


def service_of(app: Flask) -> SearchService:
    return app.extensions[SERVICE_KEY]


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


def json_body() -> dict:
    body = request.get_json(silent=True)
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


def with_links(result: dict) -> dict:
    """Add the URLs a browser needs to show a hit."""
    image_id = result["id"]
    return {
        **result,
        "url": f"/images/{image_id}",
        "file_url": f"/images/{image_id}/file",
        "thumb_url": f"/images/{image_id}/file?thumb={DEFAULT_THUMB}",
    }


# routes --------------------------------------------------------------------------------------


def _register_routes(app: Flask) -> None:
    service = service_of(app)

    @app.get("/")
    def index_page():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.post("/search")
    @documented(openapi.SEARCH)
    def search():
        if "image" in request.files or request.mimetype == "multipart/form-data":
            data, name = uploaded_image()
            response = service.search_bytes(data, requested_k(), source=name)
        elif request.mimetype.startswith("image/"):  # curl --data-binary @photo.jpg
            response = service.search_bytes(request.get_data(), requested_k(), source="<body>")
        elif request.is_json:
            body = json_body()
            k = requested_k(body)
            if ("url" in body) == ("id" in body):
                raise BadRequest('give exactly one of "url" or "id" in the JSON body')
            if "url" in body:
                response = service.search_url(body["url"], k)
            else:
                response = service.search_id(parse_id(body["id"]), k)
        else:
            raise BadRequest(
                f'send multipart/form-data with an \'image\' file, or JSON {{"url"}} or {{"id"}};'
                f" got content type {request.mimetype or 'none'!r}"
            )
        response["results"] = [with_links(hit) for hit in response["results"]]
        return jsonify(response)

    @app.post("/images")
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
        added["url"] = f"/images/{added['id']}"
        return jsonify(added), 201 if added["created"] else 200

    @app.get("/images/<image_id>")
    @documented(openapi.GET_IMAGE)
    def get_image(image_id: str):
        row = service.get(parse_id(image_id))
        return jsonify(with_links(row.to_dict()))

    @app.get("/images/<image_id>/file")
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
    @documented(openapi.DELETE_IMAGE)
    def delete_image(image_id: str):
        row = service.remove(parse_id(image_id))
        return jsonify({"deleted": row.to_dict()})

    @app.get("/health")
    @documented(openapi.HEALTH)
    def health():
        facts = service.health()
        return jsonify(facts), 200 if facts["status"] == "ok" else 503

    @app.get("/stats")
    @documented(openapi.STATS)
    def stats():
        return jsonify(service.stats())

    @app.get("/duplicates")
    @documented(openapi.DUPLICATES)
    def duplicates():
        args = request.args
        try:
            report = build_report(
                service.options,
                model_version=service.embedder.version,
                threshold=parse_float("threshold", args["threshold"]) if "threshold" in args else None,
                include_variants=args.get("include_variants", "").lower() in TRUE_WORDS,
                page=parse_int("page", args.get("page", 1), 1, 10**9),
                per_page=parse_int("per_page", args.get("per_page", 50), 1, MAX_PER_PAGE),
            )
        except (IndexFileError, IndexMismatchError) as exc:  # before ValueError: a subclass
            raise NotReady(str(exc)) from exc
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        return jsonify(report)

    @app.get("/openapi.json", endpoint="openapi")
    @documented(openapi.OPENAPI)
    def openapi_json():
        return jsonify(openapi.openapi_document(app, request.host_url.rstrip("/"), __version__))


def _register_errors(app: Flask) -> None:
    @app.errorhandler(LibraryError)
    def service_error(exc: LibraryError):
        return error_body(http_status(exc), exc.code, exc.message)

    @app.errorhandler(ImageError)
    def image_error(exc: ImageError):
        return error_body(IMAGE_ERROR_STATUS.get(exc.reason, 422), exc.reason, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
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
