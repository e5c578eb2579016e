"""Catalog schema migrations: new catalogs, catalogs written before migrations, concurrent opens."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
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
    "source_files",
}
HASH_COLUMNS = {"phash", "phash_version", "phash_bright", "phash_dark"}

# The catalog as the first code wrote it (create_all of images, index_record and thresholds):
# no hash columns, no crawl or report tables, no alembic_version.
OLD_DDL = """
CREATE TABLE images (
    id INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, stored_path VARCHAR NOT NULL,
    source VARCHAR NOT NULL, page_url VARCHAR, width INTEGER NOT NULL, height INTEGER NOT NULL,
    format VARCHAR(16) NOT NULL, bytes INTEGER NOT NULL, parent_id INTEGER, transform VARCHAR,
    meta JSON, added_at DATETIME NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(parent_id) REFERENCES images (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX ix_images_sha256 ON images (sha256);
CREATE INDEX ix_images_parent_id ON images (parent_id);
CREATE TABLE index_record (
    id INTEGER NOT NULL, model_version VARCHAR NOT NULL, dim INTEGER NOT NULL,
    index_type VARCHAR NOT NULL, vector_count INTEGER NOT NULL, updated_at DATETIME NOT NULL,
    PRIMARY KEY (id)
);
CREATE TABLE thresholds (
    model_version VARCHAR NOT NULL, duplicate DOUBLE NOT NULL, similar DOUBLE NOT NULL,
    source VARCHAR NOT NULL, details VARCHAR, updated_at DATETIME NOT NULL,
    PRIMARY KEY (model_version)
);
"""
# ... and as hash version 2 left it: phash and its version, crawl tables (made by the crawler).
V2_DDL = """
ALTER TABLE images ADD COLUMN phash BIGINT;
ALTER TABLE images ADD COLUMN phash_version INTEGER;
CREATE TABLE crawls (
    id INTEGER NOT NULL, "key" VARCHAR(40) NOT NULL, listing JSON NOT NULL,
    status VARCHAR(16) NOT NULL, runs INTEGER NOT NULL, started_at DATETIME NOT NULL,
    finished_at DATETIME, pages INTEGER NOT NULL, found INTEGER NOT NULL,
    downloaded INTEGER NOT NULL, duplicates INTEGER NOT NULL, refused JSON NOT NULL,
    failed JSON NOT NULL, last_run JSON, PRIMARY KEY (id)
);
CREATE INDEX ix_crawls_key ON crawls ("key");
CREATE TABLE crawl_urls (
    id INTEGER NOT NULL, crawl_id INTEGER NOT NULL, kind VARCHAR(8) NOT NULL, url VARCHAR NOT NULL,
    state VARCHAR(16) NOT NULL, reason VARCHAR(32), detail VARCHAR, image_id INTEGER,
    page_url VARCHAR, next_url VARCHAR, page_number INTEGER, attempts INTEGER NOT NULL,
    updated_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (crawl_id, kind, url),
    FOREIGN KEY(crawl_id) REFERENCES crawls (id) ON DELETE CASCADE,
    FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE SET NULL
);
CREATE INDEX ix_crawl_urls_crawl_id ON crawl_urls (crawl_id);
CREATE INDEX ix_crawl_urls_image_id ON crawl_urls (image_id);
"""
ADDED = "2025-03-04 05:06:07.000000"


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def write_old_catalog(path: Path, version: int) -> None:
    """A catalog the code before migrations wrote, with two images (one a variant) and records."""
    with sqlite3.connect(path) as db:
        db.executescript(OLD_DDL + (V2_DDL if version == 2 else ""))
        for i, parent in ((1, None), (2, 1)):
            db.execute(
                "INSERT INTO images (id, sha256, stored_path, source, page_url, width, height, format,"
                " bytes, parent_id, transform, meta, added_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (i, f"{i}" * 64, f"s/{i}.png", f"/in/{i}.png", None, 40 + i, 30, "PNG", 100 * i, parent,
                 "rotate:90" if parent else None, '{"alt": "cat"}', ADDED),
            )  # fmt: skip
        if version == 2:
            db.execute("UPDATE images SET phash = -5, phash_version = 2")
        db.execute("INSERT INTO index_record VALUES (1, 'm1', 256, 'IDMap2,Flat', 2, ?)", (ADDED,))
        db.execute("INSERT INTO thresholds VALUES ('m1', 0.95, 0.8, 'calibrated', NULL, ?)", (ADDED,))


def sqlite_schema(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def table_names(path: Path) -> set[str]:
    return {name for kind, name, _ in sqlite_schema(path) if kind == "table"}


def image_columns(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute("PRAGMA table_info(images)")}


def stored_version(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]


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


def test_a_new_catalog_gets_every_table_at_head(tmp_path):
    path = tmp_path / "new" / "catalog.sqlite"
    Catalog(url_of(path)).close()
    assert table_names(path) == TABLES | {"alembic_version"}
    assert image_columns(path) >= HASH_COLUMNS
    assert stored_version(path) == [HEAD_REVISION]
    assert schema_differences(url_of(path)) == []


@pytest.mark.parametrize("version", [1, 2])
def test_a_catalog_written_before_migrations_is_upgraded_with_its_rows(tmp_path, version):
    path = tmp_path / "catalog.sqlite"
    write_old_catalog(path, version)
    assert "phash_bright" not in image_columns(path) and "report_runs" not in table_names(path)
    catalog = Catalog(url_of(path))
    assert table_names(path) == TABLES | {"alembic_version"}
    assert image_columns(path) >= HASH_COLUMNS
    assert stored_version(path) == [HEAD_REVISION]
    assert schema_differences(url_of(path)) == []
    rows = catalog.get_many([1, 2])
    assert [rows[i].sha256 for i in (1, 2)] == ["1" * 64, "2" * 64]
    assert (rows[2].parent_id, rows[2].transform, rows[2].width, rows[2].bytes) == (1, "rotate:90", 42, 200)
    assert rows[1].meta == {"alt": "cat"}
    assert rows[1].added_at.replace(tzinfo=None) == datetime(2025, 3, 4, 5, 6, 7)
    expected_hash = (-5, 2) if version == 2 else (None, None)
    assert all((r.phash, r.phash_version) == expected_hash for r in rows.values())
    assert all(r.phash_bright is None and r.phash_dark is None for r in rows.values())
    record = catalog.index_record()
    assert (record.model_version, record.dim, record.vector_count) == ("m1", 256, 2)
    thresholds = catalog.thresholds("m1")
    assert (thresholds.duplicate, thresholds.similar, thresholds.source) == (0.95, 0.8, "calibrated")
    # The new columns and tables take writes.
    with catalog.session() as session:
        session.get(ImageRow, 1).phash_bright = 7
        session.add(CrawlRecord(key="k" * 40, listing={"start": "x"}, refused={}, failed={}))
    assert catalog.get(1).phash_bright == 7
    catalog.close()


def test_opening_again_changes_nothing_and_skips_alembic(tmp_path):
    path = tmp_path / "catalog.sqlite"
    write_old_catalog(path, 1)
    Catalog(url_of(path)).close()
    before = sqlite_schema(path)
    # A fresh interpreter: this one has imported Alembic already.
    code = (
        "import sys; from twice.indexer import Catalog; "
        f"Catalog({url_of(path)!r}).close(); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    Catalog(url_of(path)).close()
    assert sqlite_schema(path) == before
    assert stored_version(path) == [HEAD_REVISION]


def test_a_catalog_from_a_newer_twice_is_refused_by_name(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog(url_of(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(RuntimeError, match=r"schema revision '9999' is not one this twice knows"):
        Catalog(url_of(path))


def open_and_add(url: str, barrier, n: int) -> None:
    barrier.wait()
    catalog = Catalog(url)
    with catalog.session() as session:
        catalog.add_image(
            session, sha256=f"{n:064d}", stored_path=f"{n}.png", source=f"/in/{n}.png",
            width=4, height=3, format="PNG", bytes=10,
        )  # fmt: skip
    catalog.close()


def test_processes_opening_one_new_catalog_together_all_succeed(tmp_path):
    path = tmp_path / "catalog.sqlite"
    context = multiprocessing.get_context("fork")
    workers = 4
    barrier = context.Barrier(workers)
    processes = [
        context.Process(target=open_and_add, args=(url_of(path), barrier, n)) for n in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * workers
    assert stored_version(path) == [HEAD_REVISION]
    assert table_names(path) == TABLES | {"alembic_version"}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == workers
