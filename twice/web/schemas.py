"""Typed request and response models of the web API (pydantic v2): the source of /openapi.json.

The document is generated from these models by ``twice.web.openapi``, a small generator over
pydantic's JSON Schema output, rather than by spectree, flask-openapi3 or apiflask. The routes
parse and check their own input, so every error keeps its ``{"error": {"code", "message"}}``
body, status and wording, and ``POST /search`` and ``POST /images`` keep taking a multipart
upload and a JSON body on one route. flask-openapi3 and apiflask replace the Flask app class and
answer bad input with their own validation errors; spectree decorates plain views but adds its
own 422 validation response to every operation and types ``/images/<image_id>`` as a string
(the route takes a string on purpose, to answer a bad id with our 400). With the libraries'
validation turned off, what is left is a document builder needing as many overrides as this one
is long; so: no new framework, one dependency (pydantic).

The models describe the JSON as the routes send it today; they do not validate at run time.
A field that is sometimes left out (not sent as null) is ``Omittable``: optional in the
schema and never null. Models with the same fields as a Python API's dataclasses carry the
same names: ``SearchResponse``, ``QueryImage``, ``Match``, ``GroupMember``, ``DuplicateGroup``
(as ``twice.library``), ``Evidence``, ``ImageRecord`` ...
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from twice.search import MAX_K
from twice.search.report_render import MAX_PER_PAGE
from twice.web.service import THUMB_SIZES

DEFAULT_K = 10
DEFAULT_THUMB = 256

T = TypeVar("T")

Verdict = Literal["duplicate", "similar", "different"]
Signal = Literal["exact", "hash", "cnn", "verify"]
Score = Annotated[float, Field(ge=-1.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "default": null would read as "sent as null"


def omittable(description: str | None = None, **constraints: Any) -> Any:
    """A field the server leaves out of the JSON when it does not apply (never sends null)."""
    return Field(None, description=description, json_schema_extra=_drop_default, **constraints)


# Omittable[int]: int in the schema, not required; None in Python when the JSON lacks it.
Omittable = Annotated[T | SkipJsonSchema[None], "omittable"]


# errors --------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. bad_request, not_found, not_image")
    message: str = Field(description="what was wrong, in words, naming the offending value")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: ErrorDetail


# requests ------------------------------------------------------------------------------------


class SearchParams(BaseModel):
    k: PositiveInt = Field(DEFAULT_K, le=MAX_K, description="how many results")


class SearchUpload(BaseModel):
    """`POST /search` as multipart/form-data."""

    image: bytes


class SearchByReference(BaseModel):
    """`POST /search` as JSON: exactly one of `url` or `id`."""

    url: Omittable[str] = omittable("http(s) image URL")
    id: Omittable[PositiveInt] = omittable()
    k: Omittable[Annotated[int, Field(ge=1, le=MAX_K)]] = omittable()


class AddImageUpload(BaseModel):
    """`POST /images` as multipart/form-data."""

    image: bytes
    source: Omittable[str] = omittable()
    page_url: Omittable[str] = omittable()


class AddImageByUrl(BaseModel):
    """`POST /images` as JSON: the server fetches `url`."""

    url: str
    page_url: Omittable[str] = omittable()


class ImagePath(BaseModel):
    image_id: PositiveInt = Field(description="catalog id of the image")


class FileParams(BaseModel):
    thumb: Omittable[Annotated[int, Field(ge=THUMB_SIZES[0], le=THUMB_SIZES[1])]] = omittable(
        f"longest side of a JPEG thumbnail (1 or true: {DEFAULT_THUMB})"
    )


class DuplicatesParams(BaseModel):
    threshold: Omittable[Score] = omittable()
    include_variants: Omittable[bool] = omittable()
    page: Omittable[PositiveInt] = omittable()
    per_page: Omittable[Annotated[int, Field(ge=1, le=MAX_PER_PAGE)]] = omittable()


# images --------------------------------------------------------------------------------------


class ImageRecord(BaseModel):
    """One catalog row."""

    id: int
    sha256: str
    path: Omittable[str] = omittable("path inside the image store (left out when paths are hidden)")
    source: str = Field(description="original file path or URL (only the file name when paths are hidden)")
    page_url: str | None
    width: int
    height: int
    format: str
    bytes: int
    parent_id: int | None = Field(description="the original, when this image is a known variant of it")
    transform: str | None = Field(description="the edit that made this variant from its parent")
    meta: dict[str, Any] | None
    added_at: str | None = Field(description="ISO 8601 time the row was added")


class Links(BaseModel):
    url: str = Field(description="this image's metadata")
    file_url: str = Field(description="its stored bytes")
    thumb_url: str = Field(description="a JPEG thumbnail")


class AddedBy(BaseModel):
    """Who added an image through the service (the audit trail)."""

    at: str = Field(description="ISO 8601 time of the upload")
    action: Literal["add"]
    token: str = Field(
        description="the name of the token used (never the token); local: no token, same machine"
    )
    client: str = Field(description="the client's address")


class LinkedImage(ImageRecord, Links):
    """A catalog row with the URLs a browser needs to show it."""

    added_by: AddedBy | None = Field(description="who added it through the service; null: a reindex or crawl")


class Deleted(BaseModel):
    deleted: ImageRecord


# evidence ------------------------------------------------------------------------------------


class HashEvidence(BaseModel):
    distance: int = Field(description="Hamming distance over the best of the 8 dihedral views")
    bits: int
    transform: str = Field(description="the rotation/flip that turns the query into the match")
    stored: str | None = Field(
        description="the matched image's bright or dark view that the hash matched; null: its plain hash"
    )
    stored_of: Omittable[Literal["original", "member"] | None] = omittable(
        "reports only: whose stored view `stored` is (null: the plain hashes matched)"
    )
    verdict: Verdict | None


class CnnEvidence(BaseModel):
    score: Score
    verdict: Verdict
    margin: Omittable[float] = omittable(
        "with a calibrated clear-match rule: the score minus the best other family's"
    )
    clear: Omittable[bool] = omittable("whether the clear-match rule made it a duplicate")
    view: Omittable[str] = omittable("with test-time augmentation: the query view that scored best")


class Box(BaseModel):
    """Four sides as fractions of an image's width (left, right) and height (top, bottom)."""

    left: float
    top: float
    right: float
    bottom: float


class Verification(BaseModel):
    """Local-feature verification of a candidate (search's top candidates): keypoints matched
    one-to-one, a similarity transform fitted by RANSAC (an affine one or a homography where
    that fails), and the edit it shows."""

    verified: bool = Field(description="the fit holds: at least the verified number of inliers")
    inliers: int = Field(ge=0, description="matches consistent with the fit, at distinct positions")
    matches: int = Field(ge=0, description="one-to-one keypoint matches the fit was tried on")
    mirrored: bool | None = Field(description="the query is a mirror image of the stored image")
    angle: float | None = Field(description="degrees the query is rotated, clockwise")
    scale: float | None = Field(description="query pixels per stored pixel")
    crop: Box | None = Field(description="the box of the stored image the query shows (null: all of it)")
    borders: Box | None = Field(description="borders the query added around the picture (null: none)")
    fit: Literal["similarity", "affine", "homography"] | None = Field(
        description="the transform kept: similarity, affine (a stretch) or homography (a keystone)"
    )
    explanation: str | None = Field(description='the edit in plain words: "rotated 10° clockwise, mirrored"')
    reason: str | None = Field(description="why it did not verify (null when it did)")
    recoloured: bool = Field(description="both images in colour, in different hues: no copy edit does that")
    plain: bool = Field(description="the stored image has too little detail to verify anything against")
    reframed: bool = Field(description="the fit moves the picture: a crop, borders or a tilt")
    agreement: float | None = Field(
        ge=-1.0,
        le=1.0,
        description="correlation of the two images' grey levels once aligned by the fit, -1..1 (null: not"
        " measured); a reframing fit with under 64 inliers needs 0.7 to make a duplicate",
    )


class Evidence(BaseModel):
    """The signals that fired, their values, and which decided the verdict."""

    signals: list[Signal]
    decided_by: list[Signal]
    exact: bool
    hash: HashEvidence | None
    cnn: CnnEvidence | None
    transform: str | None = Field(description="the edit the evidence points to, when it can tell")
    verification: Omittable[Verification | None] = omittable(
        "search: the local-feature verification of a top candidate (null: not run)"
    )
    weight: Omittable[float] = omittable("search only: evidence weight that orders results of one verdict")
    summary: Omittable[str] = omittable("search only: the evidence in one line")


# search --------------------------------------------------------------------------------------


class QueryImage(BaseModel):
    source: str
    sha256: str
    width: int
    height: int
    format: str
    bytes: int
    phash: str = Field(description="64-bit perceptual hash, hex")
    id: Omittable[int] = omittable("the catalog id, when searching by id")


class Match(Links):
    """One neighbour of the query."""

    id: int
    path: Omittable[str] = omittable("stored file on the server (left out when paths are hidden)")
    source: str
    page_url: str | None
    score: Score = Field(description="cosine similarity, higher is closer")
    verdict: Verdict
    exact: bool = Field(description="the same bytes as the query")
    width: int
    height: int
    format: str
    bytes: int
    parent_id: int | None
    transform: str | None
    evidence: Evidence


class Thresholds(BaseModel):
    """The verdict rule a response was judged by."""

    duplicate: Score = Field(description="CNN score for a duplicate")
    similar: Score
    source: Literal["default", "shipped", "calibrated", "manual"] = Field(
        description="shipped: fitted with the model on images it never saw; calibrated: on this collection"
    )
    hash_duplicate: int = Field(description="max hash bits for a duplicate (-1: never)")
    hash_similar: int
    clear_score: float
    clear_margin: float
    low_structure: int = Field(description="fewer strong DCT coefficients: a hash match is weak")
    verify_inliers: int = Field(description="verification inliers that make a duplicate")
    verify_slack: float = Field(description="how far below `similar` a verified CNN score may be")
    weights: Literal["default", "calibrated"] = Field(
        description="source of the evidence weights that order results of one verdict"
    )


class SearchResponse(BaseModel):
    query: QueryImage
    results: list[Match] = Field(description="best first")
    model: str
    thresholds: Thresholds
    tta: Literal["none", "d4"]
    took_ms: float


class DuplicateOf(BaseModel):
    id: int
    score: Score
    verdict: Literal["duplicate"]
    evidence: Evidence


class AddResponse(BaseModel):
    id: int
    created: bool = Field(description="a new catalog row was made")
    already_indexed: bool = Field(description="the same bytes or a duplicate was there")
    match: Literal["exact", "duplicate"] | None
    duplicate_of: DuplicateOf | None = Field(
        description="the catalogued image a search for the upload calls its duplicate"
    )
    image: ImageRecord
    url: str


# service -------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    version: str
    arch: str
    dim: int
    invariance: str
    image_size: int
    weights: str
    device: str
    precision: str


class IndexInfo(BaseModel):
    path: Omittable[str] = omittable("the index file (left out when paths are hidden)")
    vectors: int
    type: str | None
    gpu: bool
    reloads: int


class Health(BaseModel):
    status: Literal["ok", "not_ready"]
    reason: str | None
    version: str
    model: ModelInfo
    index: IndexInfo
    pid: int


class Stats(BaseModel):
    images: int
    originals: int
    variants: int
    bytes: int
    formats: dict[str, int]
    vectors: int
    pending: int
    index_file_bytes: int
    model: str
    thresholds: Thresholds | None
    ready: bool
    reloads: int
    uptime_s: float


# duplicate report ----------------------------------------------------------------------------


class ReportIndex(BaseModel):
    type: str
    approximate: bool
    nprobe: int | None


class PairCounts(BaseModel):
    cnn: int
    hash: int
    both: int
    verify: int = Field(description="duplicate pairs that local-feature verification made")


class ReportSummary(BaseModel):
    images: int
    pending: int
    pairs: int = Field(description="duplicate pairs (search's verdict)")
    pairs_by: PairCounts
    candidate_pairs: int = Field(description="pairs judged: a signal past its cut, or near enough to verify")
    verified_pairs: int = Field(description="pairs local-feature verification ran on")
    turned_images: int = Field(
        description="images whose 8 turns and flips were embedded, so that a pair showing a turn"
        " scores as search scores it"
    )
    hashed_images: int
    searched_images: int = Field(
        description="images in no duplicate pair (loners) searched by their 8 turns and flips,"
        " as search searches a query"
    )
    groups: int
    groups_listed: int
    images_in_groups: int
    duplicate_images: int
    variant_only_groups: int
    variant_only_images: int
    known_variants_in_groups: int


class SignalCounts(BaseModel):
    cnn: int
    hash: int


class TransformRecall(BaseModel):
    recovered: int
    total: int


class MissedPair(BaseModel):
    id: int
    parent_id: int
    transform: str | None
    score: float
    hash_distance: int | None


class Recall(BaseModel):
    """Known variant pairs that the report found as pairs."""

    recovered: int
    total: int
    by_signal: SignalCounts
    by_transform: dict[str, TransformRecall]
    missed: list[MissedPair]
    missed_total: int


class Changes(BaseModel):
    since: str
    previous_model: str
    model_changed: bool
    previous_threshold: float
    images_then: int
    images_now: int
    images_added: int
    groups_then: int
    groups_now: int
    new_groups: int
    grown_groups: int
    changed_groups: int
    unchanged_groups: int
    gone_groups: int


class GroupMember(BaseModel):
    id: int
    role: Literal["original", "duplicate", "variant"]
    score: Score
    verdict: Verdict
    evidence: Evidence | None = Field(description="against the group's original (null for the original)")
    via: list[int] = Field(description="the images that chain this one to the original")
    source: str
    page_url: str | None
    path: Omittable[str] = omittable("stored file on the server (left out when paths are hidden)")
    width: int
    height: int
    format: str
    bytes: int
    added_at: str | None
    parent_id: int | None
    transform: str | None


class DuplicateGroup(BaseModel):
    size: int
    findings: int
    hidden_variants: int
    known_variants: int
    max_score: float | None
    min_score: float | None
    min_hash_distance: int | None
    members: list[GroupMember] = Field(description="the original first")
    change: Literal["new", "grown", "changed", "unchanged"] | None
    group: int


class Pagination(BaseModel):
    page: int
    per_page: int
    total_groups: int
    pages: int


class DuplicateReport(BaseModel):
    """Duplicate groups across the collection (`twice report`'s JSON)."""

    generated_at: str
    model: str
    index: ReportIndex
    threshold: float
    hash_threshold: int
    thresholds: Thresholds
    original_rule: str
    linkage: Literal["original", "split", "single"] = Field(description="how duplicate pairs make groups")
    include_variants: bool
    summary: ReportSummary
    recall: Recall
    warnings: list[str]
    changes: Changes | None
    cache: dict[str, Any] = Field(description="what the incremental caches reused")
    groups: list[DuplicateGroup]
    took_ms: float
    pagination: Pagination | None
