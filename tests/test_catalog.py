"""The catalog on SQLite and on PostgreSQL: one row per distinct bytes, records; WAL on SQLite;
URLs checked."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta

import pytest
from pg import free_port

from twice.cli import main
from twice.indexer import Catalog
from twice.indexer.catalog import parse_catalog_url


def columns(sha: str, **extra) -> dict:
    base = dict(sha256=sha, stored_path=f"{sha[:2]}/{sha}.png", source=f"/in/{sha}.png")
    return {**base, "width": 4, "height": 3, "format": "PNG", "bytes": 10, **extra}


def test_same_sha256_is_stored_once(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.session() as session:
        row, created = catalog.add_image(session, **columns("a" * 64))
        again, created_again = catalog.add_image(session, **columns("a" * 64, source="/other.png"))
    assert created and not created_again and again.id == row.id
    assert catalog.count() == 1
    assert catalog.by_sha256("a" * 64).source == "/in/" + "a" * 64 + ".png"
    catalog.close()


def test_variants_link_to_parent_and_survive_its_deletion(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.session() as session:
        parent, _ = catalog.add_image(session, **columns("a" * 64))
        child, _ = catalog.add_image(session, **columns("b" * 64, parent_id=parent.id, transform="rotate:90"))
    assert catalog.get(child.id).parent_id == parent.id
    assert catalog.delete(parent.id).id == parent.id
    assert catalog.get(child.id).parent_id is None
    assert catalog.ids().tolist() == [child.id]
    catalog.close()


def test_records_and_thresholds_persist(catalog_url):
    catalog = Catalog(catalog_url)
    catalog.set_index_record("m1", 256, "IDMap2,Flat", 41)
    catalog.set_index_record("m1", 256, "IDMap2,Flat", 42)  # replaces the one record
    catalog.set_thresholds("m1", 0.9, 0.7, "default")
    catalog.set_thresholds("m1", 0.95, 0.8, "calibrated", {"precision": 0.99})
    catalog.close()
    reopened = Catalog(catalog_url)
    assert reopened.index_record().vector_count == 42
    thresholds = reopened.thresholds("m1")
    assert (thresholds.duplicate, thresholds.similar, thresholds.source) == (0.95, 0.8, "calibrated")
    assert json.loads(thresholds.details) == {"precision": 0.99}
    assert reopened.thresholds("m2") is None
    reopened.close()


def test_sqlite_file_uses_wal(tmp_path):
    path = tmp_path / "c.sqlite"
    Catalog(f"sqlite:///{path}").count()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u@h/db", "'mysql' is not supported"),
        ("oracle://u:secret@h/db", "'oracle' is not supported"),
    ],
)
def test_unsupported_catalog_urls_are_refused_by_name(url, words):
    with pytest.raises(ValueError, match=words) as caught:
        Catalog(url)
    assert "secret" not in str(caught.value)


def test_a_plain_postgresql_url_speaks_psycopg_3():
    assert parse_catalog_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert parse_catalog_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"


def test_an_unreachable_postgresql_server_is_a_clear_error(capsys):
    url = f"postgresql://twice:secret@127.0.0.1:{free_port()}/twice"
    masked = r"postgresql\+psycopg://twice:\*\*\*@127.0.0.1:\d+/twice"
    with pytest.raises(RuntimeError, match=f"catalog {masked} cannot be opened"):
        Catalog(url)
    assert main(["--db-url", url, "status"]) == 1
    err = capsys.readouterr().err
    assert "twice status: error: catalog" in err and "cannot be opened" in err
    assert "secret" not in err and "Traceback" not in err


def test_the_cli_refuses_an_unsupported_catalog_url(capsys):
    assert main(["--db-url", "mysql://u:secret@h/db", "status"]) == 1
    err = capsys.readouterr().err
    assert "'mysql' is not supported" in err and "secret" not in err


def test_postgresql_times_come_back_in_utc_whatever_the_server_zone(postgres_url):
    catalog = Catalog(postgres_url)
    with catalog.session() as session:
        row, _ = catalog.add_image(session, **columns("a" * 64))
    added = catalog.get(row.id).added_at
    assert added.utcoffset() == timedelta(0)
    assert catalog.get(row.id).to_dict()["added_at"].endswith("+00:00")
    catalog.close()
