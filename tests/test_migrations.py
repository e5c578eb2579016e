"""Catalog schema migrations on SQLite and PostgreSQL: new catalogs, catalogs written before
migrations, concurrent opens."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from twice.indexer import Catalog
from twice.indexer.migrate import HEAD_REVISION, alembic_config
from twice.indexer.schema import Base, CrawlRecord, ImageRow

TABLES = {
    "images",
    "index_record",
    "thresholds",
    "crawls",
    "crawl_urls",
    "report_pair_cache",
    "report_runs",
    "report_hash_cache",
    "audit",
    "source_files",
}
HASH_COLUMNS = {"phash", "phash_version", "phash_bright", "phash_dark"}

# The catalog as the first code wrote it (create_all of images, index_record and thresholds):
# no hash columns, no crawl or report tables, no alembic_version.
OLD = sa.MetaData()
sa.Table(
    "images", OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True, index=True),
    sa.Column("stored_path", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("page_url", sa.String),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("images.id", ondelete="SET NULL"), index=True),
    sa.Column("transform", sa.String),
    sa.Column("meta", sa.JSON),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip
sa.Table(
    "index_record", OLD,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("index_type", sa.String, nullable=False),
    sa.Column("vector_count", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip
sa.Table(
    "thresholds", OLD,
    sa.Column("model_version", sa.String, primary_key=True),
    sa.Column("duplicate", sa.Double, nullable=False),
    sa.Column("similar", sa.Double, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("details", sa.String),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip
# ... and as hash version 2 left it: phash and its version added by hand, crawl tables made by
# the crawler's create_all (today's definitions: they have not changed since).
V2_COLUMNS = ("phash BIGINT", "phash_version INTEGER")
V2_TABLES = [Base.metadata.tables["crawls"], Base.metadata.tables["crawl_urls"]]
ADDED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def write_old_catalog(url: str, version: int) -> None:
    """A catalog the code before migrations wrote, with two images (one a variant) and records."""
    engine = create_engine(url)
    with engine.begin() as db:
        OLD.create_all(db)
        if version == 2:
            for column in V2_COLUMNS:
                db.exec_driver_sql(f"ALTER TABLE images ADD COLUMN {column}")
            Base.metadata.create_all(db, tables=V2_TABLES)
        images = OLD.tables["images"]
        for i, parent in ((1, None), (2, 1)):  # ids 1, 2 from the database's own counter
            db.execute(
                images.insert().values(
                    sha256=f"{i}" * 64, stored_path=f"s/{i}.png", source=f"/in/{i}.png", width=40 + i,
                    height=30, format="PNG", bytes=100 * i, parent_id=parent,
                    transform="rotate:90" if parent else None, meta={"alt": "cat"}, added_at=ADDED,
                )
            )  # fmt: skip
        if version == 2:
            db.exec_driver_sql("UPDATE images SET phash = -5, phash_version = 2")
        db.execute(
            OLD.tables["index_record"]
            .insert()
            .values(
                id=1, model_version="m1", dim=256, index_type="IDMap2,Flat", vector_count=2, updated_at=ADDED
            )
        )
        db.execute(
            OLD.tables["thresholds"]
            .insert()
            .values(model_version="m1", duplicate=0.95, similar=0.8, source="calibrated", updated_at=ADDED)
        )
    engine.dispose()


def inspect_url(url: str, read):
    """``read(inspector)`` on a fresh connection to ``url``."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return read(sa.inspect(connection))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    return inspect_url(url, lambda inspector: set(inspector.get_table_names()))


def image_columns(url: str) -> set[str]:
    return inspect_url(url, lambda inspector: {c["name"] for c in inspector.get_columns("images")})


def schema_of(url: str) -> dict:
    """Every table's columns, indexes, unique constraints and foreign keys, as the database has them."""

    def read(inspector) -> dict:
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                sorted(str(i) for i in inspector.get_indexes(table)),
                sorted(str(u) for u in inspector.get_unique_constraints(table)),
                sorted(str(f) for f in inspector.get_foreign_keys(table)),
            )
            for table in sorted(inspector.get_table_names())
        }

    return inspect_url(url, read)


def stored_version(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        versions = [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")]
    engine.dispose()
    return versions


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC: SQLite gives back naive UTC datetimes, PostgreSQL aware ones."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def schema_differences(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return differences


def test_head_constant_is_alembics_head():
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD_REVISION]


def test_the_models_hold_every_table():
    assert set(Base.metadata.tables) == TABLES


def test_a_new_catalog_gets_every_table_at_head(catalog_url):
    Catalog(catalog_url).close()
    assert table_names(catalog_url) == TABLES | {"alembic_version"}
    assert image_columns(catalog_url) >= HASH_COLUMNS
    assert stored_version(catalog_url) == [HEAD_REVISION]
    assert schema_differences(catalog_url) == []


def test_a_new_sqlite_catalog_makes_its_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'catalog.sqlite'}"
    Catalog(url).close()
    assert stored_version(url) == [HEAD_REVISION]


@pytest.mark.parametrize("version", [1, 2])
def test_a_catalog_written_before_migrations_is_upgraded_with_its_rows(catalog_url, version):
    write_old_catalog(catalog_url, version)
    assert "phash_bright" not in image_columns(catalog_url) and "report_runs" not in table_names(catalog_url)
    catalog = Catalog(catalog_url)
    assert table_names(catalog_url) == TABLES | {"alembic_version"}
    assert image_columns(catalog_url) >= HASH_COLUMNS
    assert stored_version(catalog_url) == [HEAD_REVISION]
    assert schema_differences(catalog_url) == []
    rows = catalog.get_many([1, 2])
    assert [rows[i].sha256 for i in (1, 2)] == ["1" * 64, "2" * 64]
    assert (rows[2].parent_id, rows[2].transform, rows[2].width, rows[2].bytes) == (1, "rotate:90", 42, 200)
    assert rows[1].meta == {"alt": "cat"}
    assert as_utc(rows[1].added_at) == ADDED
    expected_hash = (-5, 2) if version == 2 else (None, None)
    assert all((r.phash, r.phash_version) == expected_hash for r in rows.values())
    assert all(r.phash_bright is None and r.phash_dark is None for r in rows.values())
    record = catalog.index_record()
    assert (record.model_version, record.dim, record.vector_count) == ("m1", 256, 2)
    thresholds = catalog.thresholds("m1")
    assert (thresholds.duplicate, thresholds.similar, thresholds.source) == (0.95, 0.8, "calibrated")
    # The new columns and tables take writes, and new images follow the old ones.
    with catalog.session() as session:
        session.get(ImageRow, 1).phash_bright = 7
        session.add(CrawlRecord(key="k" * 40, listing={"start": "x"}, refused={}, failed={}))
        row, created = catalog.add_image(
            session, sha256="3" * 64, stored_path="s/3.png", source="/in/3.png",
            width=4, height=3, format="PNG", bytes=10,
        )  # fmt: skip
    assert created and row.id == 3
    assert catalog.get(1).phash_bright == 7
    catalog.close()


def test_opening_again_changes_nothing_and_skips_alembic(catalog_url):
    write_old_catalog(catalog_url, 1)
    Catalog(catalog_url).close()
    before = schema_of(catalog_url)
    # A fresh interpreter: this one has imported Alembic already.
    code = (
        "import sys; from twice.indexer import Catalog; "
        f"Catalog({catalog_url!r}).close(); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    Catalog(catalog_url).close()
    assert schema_of(catalog_url) == before
    assert stored_version(catalog_url) == [HEAD_REVISION]


def test_a_catalog_from_a_newer_twice_is_refused_by_name(catalog_url):
    Catalog(catalog_url).close()
    engine = create_engine(catalog_url)
    with engine.begin() as db:
        db.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(RuntimeError, match=r"schema revision '9999' is not one this twice knows"):
        Catalog(catalog_url)


def open_and_add(url: str, barrier, n: int) -> None:
    barrier.wait()
    catalog = Catalog(url)
    with catalog.session() as session:
        catalog.add_image(
            session, sha256=f"{n:064d}", stored_path=f"{n}.png", source=f"/in/{n}.png",
            width=4, height=3, format="PNG", bytes=10,
        )  # fmt: skip
    catalog.close()


def test_processes_opening_one_new_catalog_together_all_succeed(catalog_url):
    """SQLite serialises the migration on its write lock, PostgreSQL on an advisory lock."""
    context = multiprocessing.get_context("fork")
    workers = 4
    barrier = context.Barrier(workers)
    processes = [context.Process(target=open_and_add, args=(catalog_url, barrier, n)) for n in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * workers
    assert stored_version(catalog_url) == [HEAD_REVISION]
    assert table_names(catalog_url) == TABLES | {"alembic_version"}
    catalog = Catalog(catalog_url)
    assert catalog.count() == workers
    catalog.close()


def test_a_new_sqlite_catalog_opens_while_another_connection_writes_to_the_file(tmp_path):
    """Switching a file to WAL fails at once, without SQLite's busy wait, while another
    connection writes: the catalog waits for the write to end (4 processes opening one new
    catalog together met this under load)."""
    path = tmp_path / "catalog.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (i INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")
    released = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    released.start()
    try:
        catalog = Catalog(f"sqlite:///{path}")
    finally:
        released.join()
        writer.close()
    assert catalog.count() == 0 and stored_version(f"sqlite:///{path}") == [HEAD_REVISION]
    catalog.close()
