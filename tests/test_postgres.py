"""Several writers on one catalog: processes adding the same images at once lose no row and make
no duplicate; concurrent ``twice reindex`` jobs into one data dir on PostgreSQL; and the CLI
giving the same answers on PostgreSQL as on the embedded SQLite catalog."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from sqlalchemy import func, select

from conftest import ROOT, make_options
from imagegen import image_bytes, make_image
from twice.cli import main
from twice.indexer import Catalog, ImageRow, Indexer, VectorIndex

IMAGES = 40
WRITERS = 4


def writer_order(writer: int) -> list[int]:
    """The image seeds one writer adds: every image of the collection, in an order of its own."""
    seeds = list(range(IMAGES))
    random.Random(writer).shuffle(seeds)
    return seeds


def collection_bytes(seed: int) -> bytes:
    return image_bytes(make_image(seed, (48, 36)))


def stored_ids(catalog: Catalog) -> dict[str, int]:
    """sha256 -> id of every catalogued image."""
    with catalog.session() as session:
        return dict(session.execute(select(ImageRow.sha256, ImageRow.id)).all())


def add_as_writer(options, writer: int, barrier, results) -> None:
    """One writer process: every image, one short transaction each (as API uploads are)."""
    barrier.wait()
    indexer = Indexer(options, "test-model", 8)  # catalog and image store only: no vectors
    added = {}
    for seed in writer_order(writer):
        outcome = indexer.add_bytes(collection_bytes(seed), f"writer-{writer}/{seed}.png")
        added[outcome.row.sha256] = (outcome.row.id, outcome.created)
    indexer.close()
    results.put(added)


def test_writer_processes_adding_the_same_images_lose_nothing_and_duplicate_nothing(tmp_path, db_url):
    options = make_options(tmp_path / "data", db_url=db_url)
    Catalog(options.catalog_url).close()  # the schema exists before the race (migrations are tested apart)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    processes = [
        context.Process(target=add_as_writer, args=(options, writer, barrier, results))
        for writer in range(WRITERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * WRITERS

    catalog = Catalog(options.catalog_url)
    ids = stored_ids(catalog)
    assert len(ids) == catalog.count() == IMAGES  # the unique sha256: one row per image
    catalog.close()
    # Every writer was told the id the catalog holds, and exactly one writer created each row.
    assert all(ids[sha] == image_id for added in outcomes for sha, (image_id, _) in added.items())
    created = Counter(sha for added in outcomes for sha, (_, new) in added.items() if new)
    assert created == Counter(dict.fromkeys(ids, 1))


def image_columns(sha256: str) -> dict:
    return dict(sha256=sha256, stored_path=f"{sha256}.png", source=f"/in/{sha256}.png", width=4, height=3,
                format="PNG", bytes=10)  # fmt: skip


def test_writers_adding_the_same_images_in_opposite_orders_queue_instead_of_deadlocking(postgres_url):
    """Two transactions, each adding images A and B, in opposite orders, interleaved as badly
    as can be: without ``lock_sha256`` each waits for the other's uncommitted row (deadlock)."""
    catalog = Catalog(postgres_url)
    first_added, second_added = threading.Event(), threading.Event()
    created: dict[str, list[bool]] = {}
    errors: list[Exception] = []

    def add_pair(name, pair, start_after, added_one, then_wait_for) -> None:
        if start_after:
            start_after.wait(timeout=30)
        try:
            with catalog.session() as session:
                catalog.lock_sha256(session, pair)
                first = catalog.add_image(session, **image_columns(pair[0]))[1]
                added_one.set()
                if then_wait_for:  # never set when the other writer is queued on the locks
                    then_wait_for.wait(timeout=3)
                created[name] = [first, catalog.add_image(session, **image_columns(pair[1]))[1]]
        except Exception as exc:  # a deadlock, reported to the test
            errors.append(exc)

    a, b = "a" * 64, "b" * 64
    writers = [
        threading.Thread(target=add_pair, args=("one", [a, b], None, first_added, second_added)),
        threading.Thread(target=add_pair, args=("two", [b, a], first_added, second_added, None)),
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert errors == []
    assert created == {"one": [True, True], "two": [False, False]}
    assert sorted(stored_ids(catalog)) == [a, b]
    catalog.close()


# concurrent reindex jobs ---------------------------------------------------------------------


def write_writer_folder(folder: Path, writer: int) -> None:
    """Half the collection (each image in two writers' folders), named so that the writer's
    files sort, and are inserted, in an order of its own."""
    share = {(writer * IMAGES // WRITERS + i) % IMAGES for i in range(IMAGES // 2)}
    folder.mkdir(parents=True)
    for rank, seed in enumerate(s for s in writer_order(writer) if s in share):
        (folder / f"{rank:03d}_{seed}.png").write_bytes(collection_bytes(seed))


def reindex_process(options, folder: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        **options.to_env(),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "twice", "-q", "reindex", "--json", str(folder)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_reindex_jobs_into_one_postgresql_catalog(tmp_path, postgres_url):
    """Four reindex jobs, overlapping folders, batches of 8 rows per transaction, each job
    inserting in its own order: no deadlock, every image catalogued once and embedded once."""
    options = make_options(tmp_path / "data", db_url=postgres_url, batch_size=8)
    Catalog(postgres_url).close()
    for writer in range(WRITERS):
        write_writer_folder(tmp_path / f"in{writer}", writer)
    jobs = [reindex_process(options, tmp_path / f"in{writer}") for writer in range(WRITERS)]
    summaries = []
    for job in jobs:
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, err.decode()
        summaries.append(json.loads(out))
    assert sum(summary["added"] for summary in summaries) == IMAGES
    assert sum(summary["added"] + summary["already"] for summary in summaries) == IMAGES // 2 * WRITERS
    catalog = Catalog(postgres_url)
    assert catalog.count() == IMAGES
    assert VectorIndex.load(options.index_path).ids().tolist() == catalog.ids().tolist()
    with catalog.session() as session:
        sources = session.scalar(select(func.count(func.distinct(ImageRow.source))))
    assert sources == IMAGES
    catalog.close()


# the CLI on both backends ---------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch):
    """Small, CPU-only model settings for the CLI (it reads them from the environment)."""
    for name, value in {"IMAGE_SIZE": "64", "DEVICE": "cpu", "WORKERS": "0", "ALLOW_DOWNLOAD": "0"}.items():
        monkeypatch.setenv(f"TWICE_{name}", value)
    monkeypatch.delenv("TWICE_DB_URL", raising=False)


def write_collection_with_copies(folder: Path) -> Path:
    """Eight images, an exact copy, a re-encoded copy and a mirrored copy; returns a query."""
    folder.mkdir()
    for seed in range(8):
        make_image(300 + seed).save(folder / f"img_{seed}.png")
    (folder / "exact.png").write_bytes((folder / "img_1.png").read_bytes())
    Image.open(folder / "img_2.png").save(folder / "reencoded.png", compress_level=1)
    ImageOps.mirror(Image.open(folder / "img_3.png")).save(folder / "mirrored.png")
    return folder / "img_3.png"


def run_cli(capsys, data_dir: Path, db_url: str | None, *argv: str) -> str:
    url = ["--db-url", db_url] if db_url else []
    code = main(["-q", "--data-dir", str(data_dir), *url, *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def cli_answers(capsys, tmp_path: Path, folder: Path, query: Path, db_url: str | None) -> dict:
    """What reindex, search and report say, without the times and paths that differ per run."""
    data_dir = tmp_path / ("pg" if db_url else "sqlite")
    reindexed = json.loads(run_cli(capsys, data_dir, db_url, "reindex", "--json", str(folder)))
    search = json.loads(run_cli(capsys, data_dir, db_url, "search", str(query), "-k", "5", "--json"))
    report = json.loads(run_cli(capsys, data_dir, db_url, "report", "--format", "json", "-o", "-"))
    return {
        "reindex": {key: reindexed[key] for key in ("added", "already", "vectors", "skipped")},
        "search": [(hit["id"], hit["score"], hit["verdict"], hit["source"]) for hit in search["results"]],
        "groups": [sorted(member["id"] for member in group["members"]) for group in report["groups"]],
    }


def test_reindex_search_and_report_answer_alike_on_postgresql_and_sqlite(
    tmp_path, capsys, cli_env, postgres_url
):
    query = write_collection_with_copies(tmp_path / "in")
    on_sqlite = cli_answers(capsys, tmp_path, tmp_path / "in", query, None)
    on_postgres = cli_answers(capsys, tmp_path, tmp_path / "in", query, postgres_url)
    assert on_sqlite["reindex"] == {"added": 10, "already": 1, "vectors": 10, "skipped": {}}
    _, best_score, best_verdict, best_source = on_sqlite["search"][0]
    assert (best_score, best_verdict, best_source) == (pytest.approx(1.0), "duplicate", str(query))
    assert on_sqlite["groups"]  # the copies make at least one group
    assert on_postgres == on_sqlite


def test_a_server_left_by_a_killed_test_run_is_stopped_by_the_next(postgres_server):
    """pg_ctl detaches the server, so a test run killed mid-way leaves it running: the next
    run's fixture stops every server whose test process is gone, and no other."""
    import socket

    from pg import OWNER_FILE, PostgresServer, stop_orphans

    orphan = PostgresServer(postgres_server.bin_dir, postgres_server.user)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (orphan.root / OWNER_FILE).write_text(gone.stdout.strip())  # a test process that has exited
    assert stop_orphans(postgres_server.bin_dir, postgres_server.user) == [orphan.root]
    assert not orphan.root.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", orphan.port), timeout=2).close()
    assert postgres_server.root.exists()  # this run's own server is left alone
    Catalog(postgres_server.new_database()).close()
