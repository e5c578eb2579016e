"""The SQLite catalog: one row per distinct bytes, records, WAL."""

from __future__ import annotations

import sqlite3

from twice.indexer import Catalog


def columns(sha: str, **extra) -> dict:
    base = dict(sha256=sha, stored_path=f"{sha[:2]}/{sha}.png", source=f"/in/{sha}.png")
    return {**base, "width": 4, "height": 3, "format": "PNG", "bytes": 10, **extra}


def test_same_sha256_is_stored_once(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with catalog.session() as session:
        row, created = catalog.add_image(session, **columns("a" * 64))
        again, created_again = catalog.add_image(session, **columns("a" * 64, source="/other.png"))
    assert created and not created_again and again.id == row.id
    assert catalog.count() == 1
    assert catalog.by_sha256("a" * 64).source == "/in/" + "a" * 64 + ".png"


def test_variants_link_to_parent_and_survive_its_deletion(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with catalog.session() as session:
        parent, _ = catalog.add_image(session, **columns("a" * 64))
        child, _ = catalog.add_image(session, **columns("b" * 64, parent_id=parent.id, transform="rotate:90"))
    assert catalog.get(child.id).parent_id == parent.id
    assert catalog.delete(parent.id).id == parent.id
    assert catalog.get(child.id).parent_id is None
    assert catalog.ids().tolist() == [child.id]


def test_records_and_thresholds_persist(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    catalog = Catalog(url)
    catalog.set_index_record("m1", 256, "IDMap2,Flat", 42)
    catalog.set_thresholds("m1", 0.95, 0.8, "calibrated", {"precision": 0.99})
    catalog.close()
    reopened = Catalog(url)
    assert reopened.index_record().vector_count == 42
    assert reopened.thresholds("m1").duplicate == 0.95
    assert reopened.thresholds("m2") is None


def test_sqlite_file_uses_wal(tmp_path):
    path = tmp_path / "c.sqlite"
    Catalog(f"sqlite:///{path}").count()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
