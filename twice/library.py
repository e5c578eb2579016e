"""The Python API: open a data directory, add images, search, list the duplicate groups.

    import twice

    with twice.open("index_data") as library:
        library.add(["photos/"])
        for match in library.search("query.jpg", k=5).results:
            print(match.verdict, round(match.score, 3), match.source)
        groups = library.duplicates()

Results are dataclasses with the same fields as the JSON of ``twice search --json`` and of
the web service; ``to_dict()`` gives that JSON back. The CLI and the web service are thin
layers over this surface.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from twice.indexer import ReindexSummary, reindex
from twice.options import Options
from twice.search import SearchEngine, build_report

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def from_json(cls, data: dict):
    """``cls`` built from a JSON object; a key the dataclass does not know is a bug, not noise."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**data)


class JsonRecord:
    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QueryImage(JsonRecord):
    """The query as it was read: where from, its bytes' sha256, size, format and pHash."""

    source: str
    sha256: str
    width: int
    height: int
    format: str
    bytes: int
    phash: str


@dataclass(frozen=True)
class Match(JsonRecord):
    """One indexed image near the query, with its verdict and the evidence for it."""

    id: int
    path: str
    source: str
    page_url: str | None
    score: float
    verdict: str  # duplicate | similar | different
    exact: bool  # same bytes as the query
    width: int
    height: int
    format: str
    bytes: int
    parent_id: int | None  # the original this image is a known variant of
    transform: str | None  # the edit that made it from parent_id
    evidence: dict[str, Any]


@dataclass(frozen=True)
class SearchResponse(JsonRecord):
    query: QueryImage
    results: list[Match]
    model: str
    thresholds: dict[str, Any]
    tta: str
    took_ms: float

    @classmethod
    def from_json(cls, data: dict) -> SearchResponse:
        query = from_json(QueryImage, data["query"])
        results = [from_json(Match, hit) for hit in data["results"]]
        return from_json(cls, {**data, "query": query, "results": results})


@dataclass(frozen=True)
class GroupMember(JsonRecord):
    """One image of a duplicate group: the original (role ``original``) or a copy of it."""

    id: int
    role: str  # original | duplicate | variant
    score: float
    verdict: str
    evidence: dict[str, Any] | None
    via: list[int]  # images chaining it to the original when the two are not a pair themselves
    source: str
    page_url: str | None
    path: str
    width: int
    height: int
    format: str
    bytes: int
    added_at: str | None
    parent_id: int | None
    transform: str | None


@dataclass(frozen=True)
class DuplicateGroup(JsonRecord):
    """Images that are copies of one another; the original first (see the report's rule)."""

    group: int
    size: int
    findings: int  # members that are not known variants of the original
    hidden_variants: int
    known_variants: int
    max_score: float | None
    min_score: float | None
    min_hash_distance: int | None
    change: str | None  # new | grown | shrunk | same since the last recorded report
    members: list[GroupMember]

    @property
    def original(self) -> GroupMember:
        return self.members[0]

    @classmethod
    def from_json(cls, data: dict) -> DuplicateGroup:
        members = [from_json(GroupMember, m) for m in data["members"]]
        return from_json(cls, {**data, "members": members})


class Library:
    """A data directory (catalog, image store, vector index) and the model that embeds for it.

    The model loads on first use. Not thread-safe: one library per thread, or the web service.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self._embedder = None
        self._engine: SearchEngine | None = None

    @property
    def embedder(self):
        if self._embedder is None:
            from twice.model import Embedder  # torch and the weights: only once needed

            self._embedder = Embedder.from_options(self.options)
        return self._embedder

    def add(self, paths: list[str | Path], progress: bool = False) -> ReindexSummary:
        """Index image files and folders (new sha256s only) and embed anything pending."""
        self._drop_engine()  # it holds the index as it was
        return reindex([Path(p).expanduser() for p in paths], self.options, self.embedder, progress)

    def search(self, image: ImageInput, k: int = 10, tta: str | None = None) -> SearchResponse:
        """The ``k`` nearest indexed images to ``image`` (a path, encoded bytes, a PIL image or
        an RGB uint8 array), each with a verdict and its evidence."""
        engine = self._search_engine()
        if isinstance(image, str | Path):
            response = engine.search_file(Path(image).expanduser(), k, tta=tta)
        else:
            data, source = encoded(image)
            response = engine.search_bytes(data, k, source=source, tta=tta)
        return SearchResponse.from_json(response)

    def duplicates(
        self, threshold: float | None = None, include_variants: bool = False
    ) -> list[DuplicateGroup]:
        """Every group of copies in the index (what ``twice report`` lists)."""
        report = self.report(threshold=threshold, include_variants=include_variants)
        return [DuplicateGroup.from_json(group) for group in report["groups"]]

    def report(self, **kwargs) -> dict:
        """The whole duplicate report as JSON (``twice.search.build_report``'s arguments)."""
        return build_report(self.options, model_version=self.embedder.version, **kwargs)

    def close(self) -> None:
        self._drop_engine()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _search_engine(self) -> SearchEngine:
        if self._engine is None:
            self._engine = SearchEngine.open(self.options, self.embedder)
        return self._engine

    def _drop_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def encoded(image: bytes | Image.Image | np.ndarray) -> tuple[bytes, str]:
    """Encoded image bytes and a name for them, from bytes, a PIL image or an RGB array."""
    if isinstance(image, bytes):
        return image, "<bytes>"
    source = "<image>"
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"an image array must be uint8 HxW or HxWxC, not {image.dtype} {image.shape}")
        image, source = Image.fromarray(image), "<array>"
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), source
    raise TypeError(f"search takes a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")


def open(data_dir: str | Path | None = None, **options: Any) -> Library:  # noqa: A001 (twice.open)
    """A ``Library`` over ``data_dir`` (default: ``TWICE_DATA_DIR``, else ``index_data/``),
    with any other ``Options`` field given by name (``image_size=160``, ``device="cpu"``)."""
    unknown = set(options) - {f.name for f in fields(Options)}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; see twice.options.Options")
    settings = Options.from_env().with_overrides(**options)
    if data_dir is not None:
        settings = settings.with_overrides(data_dir=Path(data_dir).expanduser())
    return Library(settings)
