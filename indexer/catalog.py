"""The catalog: one SQL database describing every stored image; SQLite by default (a file in
the data directory), PostgreSQL by URL for several machines and writers.

Catalog row id == vector id in the FAISS store, so search needs no side table.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import Insert, create_engine, delete, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from twice.hashing import HASH_VERSION, STORED_COLUMNS, STORED_KINDS

from .migrate import upgrade_schema
from .schema import Base, ImageRow, IndexRecord, ThresholdRecord, utcnow

LOG = logging.getLogger(__name__)

DIALECTS = ("sqlite", "postgresql")
# PostgreSQL advisory locks on image sha256s (``Catalog.lock_sha256``): the two-key form, whose
# keys never meet the one-key migration lock's; the second key is the sha256's first 32 bits.
SHA256_LOCK_KIND = 0x7477
LOCK_SHA256 = text("SELECT pg_advisory_xact_lock(:kind, :key)")


def parse_catalog_url(url: str) -> URL:
    """``url`` parsed and checked: SQLite or PostgreSQL (``postgresql://`` speaks psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"catalog URL {url!r} is not a database URL (sqlite:///PATH or postgresql://...)"
        ) from None
    if parsed.get_backend_name() not in DIALECTS:
        raise ValueError(
            f"catalog URL {parsed!r}: {parsed.get_backend_name()!r} is not supported "
            "(sqlite:///PATH, or postgresql+psycopg://USER@HOST/DATABASE)"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


SQLITE_BUSY_SECONDS = 30  # how long a SQLite connection waits for another's write lock


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite files get WAL, foreign keys and a busy timeout;
    PostgreSQL connections are checked before use (a server restart costs no request)."""
    parsed = parse_catalog_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(parsed)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _enable_wal(cursor) -> None:
    """Switch the file to WAL (kept in the file: a no-op once done). The switch needs the file
    to itself and SQLite answers "database is locked" at once, without its busy wait, while
    another connection writes: processes opening one new catalog together met it under load."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _postgresql_engine(url: URL) -> Engine:
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        raise RuntimeError(
            f"catalog {url!r}: PostgreSQL needs psycopg 3 (pip install 'twice[postgres]'): {exc}"
        ) from exc

    @event.listens_for(engine, "connect")
    def _utc_session(dbapi_connection, _record) -> None:
        # Timestamps come back in UTC whatever the server's TimeZone, as SQLite's do. Autocommit:
        # a SET inside the pool's first transaction would be rolled back with it.
        autocommit, dbapi_connection.autocommit = dbapi_connection.autocommit, True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.autocommit = autocommit

    return engine


def insert_for(session: Session, model: type[Base]) -> Insert:
    """The catalog dialect's INSERT for ``model``, which has ``on_conflict_do_nothing`` /
    ``on_conflict_do_update`` (SQLite and PostgreSQL spell ON CONFLICT alike)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def upsert(
    session: Session, model: type[Base], values: dict, keys: Sequence[str], changes: dict | None = None
) -> None:
    """Insert ``values``, or update the row whose unique ``keys`` they match with them (and
    ``changes``, expressions over the stored row): one statement, so concurrent writers of one
    key never fail on its constraint; the last writer's values win."""
    insert = insert_for(session, model)
    changed = {name: insert.excluded[name] for name in values if name not in keys}
    statement = insert.values(**values).on_conflict_do_update(
        index_elements=list(keys), set_={**changed, **(changes or {})}
    )
    session.execute(statement)


class Catalog:
    """Rows of images, the index record and thresholds, over one engine URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            with storage_errors(url):
                upgrade_schema(self.engine)  # the one place tables are created or changed
        except OperationalError as exc:  # no server, wrong credentials, unreadable file
            self.engine.dispose()
            raise RuntimeError(f"catalog {self.engine.url!r} cannot be opened: {exc.orig}") from exc
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
        """Insert an image row unless its sha256 is known; returns (row, created).

        INSERT .. ON CONFLICT DO NOTHING: when another writer stores the same bytes at once,
        one row is made and the other writer gets it back (PostgreSQL waits for the first
        writer's commit), with no error and no rolled-back transaction.
        """
        existing = self.find_sha256(session, columns["sha256"])
        if existing is not None:
            return existing, False
        insert = insert_for(session, ImageRow).values(**columns)
        row = session.scalar(insert.on_conflict_do_nothing(index_elements=["sha256"]).returning(ImageRow))
        if row is not None:
            return row, True
        existing = self.find_sha256(session, columns["sha256"])
        if existing is None:  # another writer stored the same bytes and deleted them at once
            raise RuntimeError(f"catalog: image {columns['sha256']} was deleted while being added")
        return existing, False

    @staticmethod
    def lock_sha256(session: Session, sha256s: Iterable[str]) -> None:
        """Before adding several images in one transaction: on PostgreSQL, take a lock per
        sha256 for the rest of it, in one global order. Two writers adding some of the same
        images in different orders then queue on these instead of deadlocking on each other's
        uncommitted rows. (SQLite has one writer at a time: nothing to do.)"""
        if session.get_bind().dialect.name != "postgresql":
            return
        for key in sorted({int(sha256[:8], 16) - 2**31 for sha256 in sha256s}):
            session.execute(LOCK_SHA256, {"kind": SHA256_LOCK_KIND, "key": key})

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
        values = dict(model_version=model_version, dim=dim, index_type=index_type, vector_count=count)
        with self.session() as session:
            upsert(session, IndexRecord, {"id": 1, **values, "updated_at": utcnow()}, ["id"])

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
        values = dict(duplicate=duplicate, similar=similar, source=source)
        values["details"] = json.dumps(details) if details else None
        with self.session() as session:
            upsert(
                session,
                ThresholdRecord,
                {"model_version": model_version, **values, "updated_at": utcnow()},
                ["model_version"],
            )


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
        if not url.startswith("sqlite") or (
            "disk is full" not in message and "disk i/o error" not in message
        ):
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
