"""The catalog: one SQL database (SQLite by default) describing every stored image.

Catalog row id == vector id in the FAISS store, so search needs no side table.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from twice.hashing import HASH_VERSION, STORED_COLUMNS, STORED_KINDS

from .migrate import upgrade_schema
from .schema import ImageRow, IndexRecord, ThresholdRecord, utcnow

LOG = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


class Catalog:
    """Rows of images, the index record and thresholds, over one engine URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        with storage_errors(url):
            upgrade_schema(self.engine)  # the one place tables are created or changed
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error; SQLite's "database
        or disk is full" and I/O errors come out as ``OSError`` naming the catalog file."""
        with storage_errors(self.url), self._sessions() as session, session.begin():
            yield session

    # images -------------------------------------------------------------------------------

    @staticmethod
    def find_sha256(session: Session, sha256: str) -> ImageRow | None:
        return session.scalar(select(ImageRow).where(ImageRow.sha256 == sha256))

    def add_image(self, session: Session, **columns: object) -> tuple[ImageRow, bool]:
        """Insert an image row unless its sha256 is known; returns (row, created)."""
        existing = self.find_sha256(session, columns["sha256"])
        if existing is not None:
            return existing, False
        row = ImageRow(**columns)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # another writer stored the same bytes first
            existing = self.find_sha256(session, columns["sha256"])
            if existing is None:
                raise
            return existing, False
        return row, True

    def get(self, image_id: int) -> ImageRow | None:
        with self.session() as session:
            return session.get(ImageRow, image_id)

    def get_many(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self.session() as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(ids)))
            return {row.id: row for row in rows}

    def parent_ids(self, ids: Iterable[int]) -> dict[int, int | None]:
        """{id: parent_id} of the rows among ``ids`` (a light query: two columns)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self.session() as session:
            rows = session.execute(select(ImageRow.id, ImageRow.parent_id).where(ImageRow.id.in_(ids)))
            return {image_id: parent for image_id, parent in rows}

    def by_sha256(self, sha256: str) -> ImageRow | None:
        with self.session() as session:
            return self.find_sha256(session, sha256)

    def known_sha256(self) -> set[str]:
        with self.session() as session:
            return set(session.scalars(select(ImageRow.sha256)))

    def ids(self) -> np.ndarray:
        """All image ids, sorted, as int64."""
        with self.session() as session:
            ids = session.scalars(select(ImageRow.id).order_by(ImageRow.id)).all()
        return np.asarray(ids, dtype=np.int64)

    def count(self) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(ImageRow)) or 0

    def delete(self, image_id: int) -> ImageRow | None:
        """Delete one row (its variants keep existing, parent set to NULL); returns it."""
        with self.session() as session:
            row = session.get(ImageRow, image_id)
            if row is not None:
                session.execute(delete(ImageRow).where(ImageRow.id == image_id))
            return row

    # index record and thresholds ----------------------------------------------------------

    def index_record(self) -> IndexRecord | None:
        with self.session() as session:
            return session.get(IndexRecord, 1)

    def set_index_record(self, model_version: str, dim: int, index_type: str, count: int) -> None:
        with self.session() as session:
            record = session.get(IndexRecord, 1) or IndexRecord(id=1)
            record.model_version, record.dim = model_version, dim
            record.index_type, record.vector_count = index_type, count
            record.updated_at = utcnow()
            session.add(record)

    def thresholds(self, model_version: str) -> ThresholdRecord | None:
        with self.session() as session:
            return session.get(ThresholdRecord, model_version)

    def set_thresholds(
        self,
        model_version: str,
        duplicate: float,
        similar: float,
        source: str,
        details: dict | None = None,
    ) -> None:
        with self.session() as session:
            record = session.get(ThresholdRecord, model_version) or ThresholdRecord(
                model_version=model_version
            )
            record.duplicate, record.similar, record.source = duplicate, similar, source
            record.details = json.dumps(details) if details else None
            record.updated_at = utcnow()
            session.add(record)


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """SQLite's "database or disk is full" and I/O errors as an ``OSError`` naming the file.

    On a full disk SQLite often says only "disk I/O error" (it could not grow the WAL's
    shared-memory file): a folder with almost no free space makes that ENOSPC too.
    """
    try:
        yield
    except OperationalError as exc:
        message = str(exc.orig).lower()
        if "disk is full" not in message and "disk i/o error" not in message:
            raise
        path = Path(url.removeprefix("sqlite:///"))
        code = errno.ENOSPC if "disk is full" in message or _nearly_full(path.parent) else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (SQLite: {exc.orig})", str(path)) from exc


def _nearly_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


def load_stored_hashes(catalog, after_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (N, 3) stored hashes) of catalogued images with a current-version hash and an id
    above ``after_id``: the plain hash, then each ``STORED_VIEWS`` view's (0 where NULL: flat,
    see ``stored_present``).

    Hashes of another ``HASH_VERSION`` are left out until ``twice reindex`` recomputes them.
    """
    columns = [getattr(ImageRow, name) for name in STORED_COLUMNS]
    with catalog.session() as session:
        rows = session.execute(
            select(ImageRow.id, ImageRow.phash, *columns)
            .where(ImageRow.phash.is_not(None), ImageRow.phash_version == HASH_VERSION)
            .where(ImageRow.id > after_id)
            .order_by(ImageRow.id)
        ).all()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    stored = np.array([[0 if h is None else h for h in r[1:]] for r in rows], np.int64)
    return ids, stored.reshape(len(rows), len(STORED_KINDS))
