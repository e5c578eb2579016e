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

from twice.indexer import ImageError, IndexFileError, IndexMismatchError
from twice.options import Options
from twice.search import MAX_K, build_report
from twice.web.service import (
    THUMB_SIZES,
    BadRequest,
    NotReady,
    SearchService,
    ServiceError,
    check_id,
)

LOG = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_K = 10
DEFAULT_THUMB = 256
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
    def get_image(image_id: str):
        row = service.get(parse_id(image_id))
        return jsonify(with_links(row.to_dict()))

    @app.get("/images/<image_id>/file")
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
    def delete_image(image_id: str):
        row = service.delete(parse_id(image_id))
        return jsonify({"deleted": row.to_dict()})

    @app.get("/health")
    def health():
        facts = service.health()
        return jsonify(facts), 200 if facts["status"] == "ok" else 503

    @app.get("/stats")
    def stats():
        return jsonify(service.stats())

    @app.get("/duplicates")
    def duplicates():
        args = request.args
        try:
            report = build_report(
                service.options,
                model_version=service.embedder.version,
                threshold=parse_float("threshold", args["threshold"]) if "threshold" in args else None,
                include_variants=args.get("include_variants", "").lower() in TRUE_WORDS,
                page=parse_int("page", args.get("page", 1), 1, 10**9),
                per_page=parse_int("per_page", args.get("per_page", 50), 1, 1000),
            )
        except (IndexFileError, IndexMismatchError) as exc:  # before ValueError: a subclass
            raise NotReady(str(exc)) from exc
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        return jsonify(report)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document(request.host_url.rstrip("/")))


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        return error_body(exc.status, exc.code, exc.message)

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


# OpenAPI -------------------------------------------------------------------------------------


def _error_response(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _query_parameter(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _json_response(description: str, schema: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


ID_PARAMETER = {
    "name": "image_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
    "description": "catalog id of the image",
}

K_PARAMETER = {
    "name": "k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K},
    "description": "how many results",
}

NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_INT = {"type": "integer", "nullable": True}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Image": {
        "type": "object",
        "required": ["id", "sha256", "source", "width", "height", "format", "bytes"],
        "properties": {
            "id": {"type": "integer"},
            "sha256": {"type": "string"},
            "path": {"type": "string", "description": "path inside the image store"},
            "source": {"type": "string", "description": "original file path or URL"},
            "page_url": NULLABLE_STRING,
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "format": {"type": "string"},
            "bytes": {"type": "integer"},
            "parent_id": NULLABLE_INT,
            "transform": NULLABLE_STRING,
            "meta": {"type": "object", "nullable": True},
            "added_at": NULLABLE_STRING,
            "url": {"type": "string"},
            "file_url": {"type": "string"},
            "thumb_url": {"type": "string"},
        },
    },
    "Result": {
        "type": "object",
        "required": ["id", "score", "verdict", "exact"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string", "description": "stored file on the server"},
            "source": {"type": "string"},
            "page_url": NULLABLE_STRING,
            "score": {"type": "number", "description": "cosine similarity, higher is closer"},
            "verdict": {"type": "string", "enum": ["duplicate", "similar", "different"]},
            "exact": {"type": "boolean", "description": "the same bytes as the query"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "format": {"type": "string"},
            "bytes": {"type": "integer"},
            "parent_id": NULLABLE_INT,
            "transform": NULLABLE_STRING,
            "evidence": {
                "type": "object",
                "description": "signals that fired (exact, hash, cnn), their values, the matched"
                " rotation/flip (and hash.stored: the result's bright or dark view that the hash"
                " matched, null for its plain hash), and which decided the verdict",
                "properties": {
                    "signals": {"type": "array", "items": {"type": "string"}},
                    "decided_by": {"type": "array", "items": {"type": "string"}},
                    "exact": {"type": "boolean"},
                    "hash": {"type": "object", "nullable": True},
                    "cnn": {
                        "type": "object",
                        "nullable": True,
                        "description": "score and its own verdict; with a calibrated clear-match"
                        " rule also margin (the score minus the best other family's) and clear"
                        " (whether that rule made it a duplicate)",
                    },
                    "transform": NULLABLE_STRING,
                    "summary": {"type": "string", "description": "the evidence in one line"},
                },
            },
            "url": {"type": "string"},
            "file_url": {"type": "string"},
            "thumb_url": {"type": "string"},
        },
    },
    "SearchResponse": {
        "type": "object",
        "required": ["query", "results", "model", "thresholds", "took_ms"],
        "properties": {
            "query": {
                "type": "object",
                "properties": {
                    "source": {"type": "string"},
                    "sha256": {"type": "string"},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "format": {"type": "string"},
                    "bytes": {"type": "integer"},
                    "id": {"type": "integer"},
                },
            },
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
            "model": {"type": "string"},
            "thresholds": {
                "type": "object",
                "properties": {
                    "duplicate": {"type": "number", "description": "CNN score for a duplicate"},
                    "similar": {"type": "number"},
                    "source": {"type": "string", "enum": ["default", "calibrated", "manual"]},
                    "hash_duplicate": {"type": "integer", "description": "max hash bits for a duplicate"},
                    "hash_similar": {"type": "integer"},
                    "weights": {
                        "type": "string",
                        "enum": ["default", "calibrated"],
                        "description": "source of the evidence weights that order results of one verdict",
                    },
                },
            },
            "took_ms": {"type": "number"},
        },
    },
    "AddResponse": {
        "type": "object",
        "required": ["id", "created", "already_indexed", "match", "image"],
        "properties": {
            "id": {"type": "integer"},
            "created": {"type": "boolean", "description": "a new catalog row was made"},
            "already_indexed": {"type": "boolean", "description": "the same bytes or a duplicate was there"},
            "match": {"type": "string", "enum": ["exact", "duplicate"], "nullable": True},
            "duplicate_of": {
                "type": "object",
                "nullable": True,
                "description": "the catalogued image a search for the upload calls its duplicate",
                "properties": {
                    "id": {"type": "integer"},
                    "score": {"type": "number"},
                    "verdict": {"type": "string"},
                    "evidence": {"type": "object", "description": "as in a search result"},
                },
            },
            "image": {"$ref": "#/components/schemas/Image"},
            "url": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "model", "index"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "not_ready"]},
            "reason": NULLABLE_STRING,
            "version": {"type": "string"},
            "model": {"type": "object"},
            "index": {"type": "object"},
            "pid": {"type": "integer"},
        },
    },
    "Stats": {
        "type": "object",
        "required": ["images", "vectors", "model", "ready"],
        "properties": {
            "images": {"type": "integer"},
            "originals": {"type": "integer"},
            "variants": {"type": "integer"},
            "bytes": {"type": "integer"},
            "formats": {"type": "object", "additionalProperties": {"type": "integer"}},
            "vectors": {"type": "integer"},
            "pending": {"type": "integer"},
            "index_file_bytes": {"type": "integer"},
            "model": {"type": "string"},
            "thresholds": {"type": "object", "nullable": True},
            "ready": {"type": "boolean"},
            "reloads": {"type": "integer"},
            "uptime_s": {"type": "number"},
        },
    },
}

ERRORS_COMMON = {
    "400": _error_response("bad request: missing field, bad parameter"),
    "503": _error_response("index not ready"),
}

IMAGE_ERRORS = {
    "413": _error_response("image or request body too large"),
    "415": _error_response("not an image"),
    "422": _error_response("undecodable image, decompression bomb, or URL that cannot be fetched"),
}

MULTIPART_IMAGE = {
    "type": "object",
    "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"}},
}


def openapi_document(server_url: str = "") -> dict:
    """An OpenAPI 3 description of every route."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "twice",
            "version": _version(),
            "description": "Duplicate-aware image search: top-k neighbours with a verdict each.",
        },
        "servers": [{"url": server_url}] if server_url else [],
        "paths": {
            "/search": {
                "post": {
                    "summary": "Top-k neighbours of an uploaded image, a URL or a catalogued image",
                    "parameters": [K_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {"schema": MULTIPART_IMAGE},
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "url": {"type": "string", "description": "http(s) image URL"},
                                        "id": {"type": "integer", "minimum": 1},
                                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json_response("results, best first", "SearchResponse"),
                        "404": _error_response("unknown id"),
                        **ERRORS_COMMON,
                        **IMAGE_ERRORS,
                    },
                }
            },
            "/images": {
                "post": {
                    "summary": "Add one image and index it at once",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {"type": "string", "format": "binary"},
                                        "source": {"type": "string"},
                                        "page_url": {"type": "string"},
                                    },
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["url"],
                                    "properties": {"url": {"type": "string"}, "page_url": {"type": "string"}},
                                }
                            },
                        },
                    },
                    "responses": {
                        "201": _json_response("added", "AddResponse"),
                        "200": _json_response("the same bytes were already there", "AddResponse"),
                        **ERRORS_COMMON,
                        **IMAGE_ERRORS,
                    },
                }
            },
            "/images/{image_id}": {
                "get": {
                    "summary": "Metadata of one image",
                    "parameters": [ID_PARAMETER],
                    "responses": {
                        "200": _json_response("the image row", "Image"),
                        "400": _error_response("bad id"),
                        "404": _error_response("unknown id"),
                    },
                },
                "delete": {
                    "summary": "Remove an image from the catalog, the index and the store",
                    "parameters": [ID_PARAMETER],
                    "responses": {
                        "200": {
                            "description": "deleted",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"deleted": {"$ref": "#/components/schemas/Image"}},
                                    }
                                }
                            },
                        },
                        "404": _error_response("unknown id"),
                        **ERRORS_COMMON,
                    },
                },
            },
            "/images/{image_id}/file": {
                "get": {
                    "summary": "The stored bytes, or a JPEG thumbnail",
                    "parameters": [
                        ID_PARAMETER,
                        {
                            "name": "thumb",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": THUMB_SIZES[0],
                                "maximum": THUMB_SIZES[1],
                            },
                            "description": f"longest side of a JPEG thumbnail (1 or true: {DEFAULT_THUMB})",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "image bytes",
                            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        "304": {"description": "not modified (ETag)"},
                        "400": _error_response("bad id or thumbnail size"),
                        "404": _error_response("unknown id or missing file"),
                        "422": _error_response("stored file cannot be decoded for a thumbnail"),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Model, index size and version",
                    "responses": {
                        "200": _json_response("ready", "Health"),
                        "503": _json_response("no usable index yet", "Health"),
                    },
                }
            },
            "/duplicates": {
                "get": {
                    "summary": "Duplicate groups across the collection (the report's JSON), paginated",
                    "parameters": [
                        _query_parameter("threshold", {"type": "number", "minimum": -1, "maximum": 1}),
                        _query_parameter("include_variants", {"type": "boolean"}),
                        _query_parameter("page", {"type": "integer", "minimum": 1}),
                        _query_parameter("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    ],
                    "responses": {
                        "200": {"description": "duplicate groups", "content": {"application/json": {}}},
                        "400": _error_response("bad parameter"),
                        "503": _error_response("no usable index yet"),
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "Catalog and index counts",
                    "responses": {"200": _json_response("counts", "Stats")},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3 document"}},
                }
            },
        },
        "components": {"schemas": SCHEMAS},
    }


def _version() -> str:
    from twice.version import __version__

    return __version__


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    """``api.app`` for gunicorn, built on first access so importing api.py stays cheap."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
