"""The OpenAPI 3.1 document of the web app, generated from its routes and ``twice.web.schemas``.

Each documented view carries an ``Operation`` (set by the ``documented`` decorator next to the
route); ``openapi_document`` walks the app's URL map, so a path and its methods come from the
route itself. Schemas are pydantic's JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1),
collected once under ``components/schemas``. Why not a library: see ``twice.web.schemas``.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from twice.web import schemas

LOG = logging.getLogger(__name__)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
SKIPPED_METHODS = {"HEAD", "OPTIONS"}
BINARY = {"type": "string", "format": "binary"}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Reply:
    """One documented response: a description and its body (a model, an inline schema, none)."""

    description: str
    body: type[BaseModel] | dict | None = schemas.ErrorBody
    media_type: str = "application/json"


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Reply | str]  # a str: an error with an ErrorBody
    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: Mapping[str, type[BaseModel]] = field(default_factory=dict)  # media type -> model


def documented(operation: Operation) -> Callable[[F], F]:
    """Attach ``operation`` to a view function, for ``openapi_document``."""

    def attach(view: F) -> F:
        view.openapi = operation  # type: ignore[attr-defined]
        return view

    return attach


class _Schema(GenerateJsonSchema):
    def field_title_should_be_set(self, schema) -> bool:
        return False  # property names say it; "title": "Page Url" on every field is noise


@cache
def component_schemas() -> dict[str, dict]:
    """Every model of ``twice.web.schemas``, by name, with refs into ``components/schemas``."""
    models = [
        value
        for value in vars(schemas).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == schemas.__name__
    ]
    _, top = models_json_schema(
        [(model, "serialization") for model in models], ref_template=REF, schema_generator=_Schema
    )
    return top["$defs"]


def openapi_document(
    app: Flask, server_url: str = "", version: str = "", private_reads: bool = False
) -> dict:
    """An OpenAPI 3.1 description of every route of ``app`` that carries an ``Operation``.

    A route's access rule (``twice.web.access.rule``) adds its security: writes need a bearer
    token (401, 403), reads too when ``private_reads``; a rate-limited route may answer 429.
    """
    paths: dict[str, dict] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        operation = getattr(view, "openapi", None)
        if operation is None:
            continue
        access = getattr(view, "access", None)
        role = getattr(access, "role", None)
        needs_token = role is not None and (role != "read" or private_reads)
        limited = getattr(access, "limit", None) is not None
        item = paths.setdefault(openapi_path(rule.rule), {})
        for method in sorted(rule.methods - SKIPPED_METHODS):
            item[method.lower()] = operation_object(operation, needs_token, limited)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "twice",
            "version": version,
            "description": "Duplicate-aware image search: top-k neighbours with a verdict each.",
        },
        "servers": [{"url": server_url}] if server_url else [],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(component_schemas()),  # the cache stays as built
            "securitySchemes": {BEARER: SECURITY_SCHEME},
        },
    }


def openapi_path(rule: str) -> str:
    """Flask's ``/images/<image_id>`` (or ``<int:image_id>``) as OpenAPI's ``/images/{image_id}``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def operation_object(operation: Operation, needs_token: bool = False, limited: bool = False) -> dict:
    parameters = [
        *parameters_of(operation.path, "path"),
        *parameters_of(operation.query, "query"),
    ]
    document: dict[str, Any] = {"summary": operation.summary}
    if parameters:
        document["parameters"] = parameters
    if operation.body:
        document["requestBody"] = {
            "required": True,
            "content": {media: {"schema": ref(model)} for media, model in operation.body.items()},
        }
    responses = dict(operation.responses)
    if needs_token:
        document["security"] = [{BEARER: []}]
        responses |= TOKEN_ERRORS
    if limited:
        responses |= LIMIT_ERRORS
    document["responses"] = {
        str(status): response_object(reply if isinstance(reply, Reply) else Reply(reply))
        for status, reply in sorted(responses.items())
    }
    return document


def parameters_of(model: type[BaseModel] | None, where: str) -> list[dict]:
    """One OpenAPI parameter per field of ``model`` (the model's own schema, inlined)."""
    if model is None:
        return []
    schema = component_schemas()[model.__name__]
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        parameter = {"name": name, "in": where, "required": where == "path" or name in required}
        parameter["schema"] = prop
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def response_object(reply: Reply) -> dict:
    document: dict[str, Any] = {"description": reply.description}
    if reply.body is not None:
        document["content"] = {reply.media_type: {"schema": ref(reply.body)}}
    return document


def ref(body: type[BaseModel] | dict) -> dict:
    return body if isinstance(body, dict) else {"$ref": REF.format(model=body.__name__)}


# the operations, attached to their views in twice.web.app --------------------------------------

BEARER = "bearer"
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "a token from `twice token create NAME --role read|write|admin`, or TWICE_API_TOKEN",
}
TOKEN_ERRORS: dict[int, Reply | str] = {
    401: "no bearer token, or one this service does not know",
    403: "the token's role is too low, the service is read-only, or a write from another origin",
}
LIMIT_ERRORS: dict[int, Reply | str] = {429: "too many requests from this client (see Retry-After)"}

COMMON_ERRORS: dict[int, Reply | str] = {
    400: "bad request: missing field, bad parameter",
    503: "index not ready",
}

IMAGE_ERRORS: dict[int, Reply | str] = {
    413: "image or request body too large",
    415: "not an image",
    422: "undecodable image, decompression bomb, or URL that cannot be fetched",
}

SEARCH = Operation(
    "Top-k neighbours of an uploaded image, a URL or a catalogued image",
    query=schemas.SearchParams,
    body={"multipart/form-data": schemas.SearchUpload, "application/json": schemas.SearchByReference},
    responses={
        200: Reply("results, best first", schemas.SearchResponse),
        404: "unknown id",
        **COMMON_ERRORS,
        **IMAGE_ERRORS,
        503: "index not ready, or as many searches running as this worker takes (see Retry-After)",
    },
)

ADD_IMAGE = Operation(
    "Add one image and index it at once",
    body={"multipart/form-data": schemas.AddImageUpload, "application/json": schemas.AddImageByUrl},
    responses={
        201: Reply("added", schemas.AddResponse),
        200: Reply("the same bytes were already there", schemas.AddResponse),
        **COMMON_ERRORS,
        **IMAGE_ERRORS,
    },
)

GET_IMAGE = Operation(
    "Metadata of one image",
    path=schemas.ImagePath,
    responses={200: Reply("the image row", schemas.LinkedImage), 400: "bad id", 404: "unknown id"},
)

DELETE_IMAGE = Operation(
    "Remove an image from the catalog, the index and the store",
    path=schemas.ImagePath,
    responses={200: Reply("deleted", schemas.Deleted), 404: "unknown id", **COMMON_ERRORS},
)

GET_IMAGE_FILE = Operation(
    "The stored bytes, or a JPEG thumbnail",
    path=schemas.ImagePath,
    query=schemas.FileParams,
    responses={
        200: Reply("image bytes", BINARY, "image/*"),
        304: Reply("not modified (ETag)", None),
        400: "bad id or thumbnail size",
        404: "unknown id or missing file",
        422: "stored file cannot be decoded for a thumbnail",
    },
)

HEALTH = Operation(
    "Model, index size and version",
    responses={200: Reply("ready", schemas.Health), 503: Reply("no usable index yet", schemas.Health)},
)

DUPLICATES = Operation(
    "Duplicate groups across the collection (the report's JSON), paginated",
    query=schemas.DuplicatesParams,
    responses={
        200: Reply("duplicate groups", schemas.DuplicateReport),
        400: "bad parameter",
        503: "no usable index yet",
    },
)

STATS = Operation("Catalog and index counts", responses={200: Reply("counts", schemas.Stats)})

METRICS = Operation(
    "Prometheus metrics: requests, latency histograms, index size",
    responses={200: Reply("Prometheus text format 0.0.4", {"type": "string"}, "text/plain")},
)

OPENAPI = Operation("This document", responses={200: Reply("OpenAPI 3.1 document", None)})
