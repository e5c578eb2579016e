"""The write-ahead log of vector adds: replay, torn tails, damage, a writer killed mid-append,
and the Indexer's appends and folds."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from conftest import ROOT, make_options
from imagegen import image_bytes, make_image, write_images
from twice.cli import main
from twice.indexer import Indexer, VectorIndex, reindex
from twice.indexer.store import FileStamp
from twice.indexer.vector_log import VectorLog, log_path
from twice.web import app as web


def unit_vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def saved_index(tmp_path, n: int = 10):
    path = tmp_path / "vectors.twice"
    index = VectorIndex("m1", 16)
    index.add(np.arange(1, n + 1), unit_vectors(n))
    index.save(path)
    return path, VectorLog(log_path(path), "m1", 16)


def test_load_replays_appends_and_a_reader_catches_up_from_its_position(tmp_path):
    path, log = saved_index(tmp_path)
    xb = unit_vectors(5, seed=1)
    log.append(np.array([11, 12]), xb[:2])
    reader = VectorIndex.load(path, "m1", 16)
    assert reader.ids().tolist() == list(range(1, 13))
    log.append(np.array([13, 12]), xb[2:4])  # 12 again: the later vector wins
    assert reader.replay(log) == 2
    ids, stored = reader.vectors()
    assert ids.tolist() == list(range(1, 14))
    np.testing.assert_array_equal(stored[-2:], xb[[3, 2]])
    assert reader.replay(log) == 0
    assert VectorIndex.load(path, "m1", 16, replay_log=False).ids().tolist() == list(range(1, 11))


def test_a_torn_tail_is_ignored_and_cut_off_by_the_next_append(tmp_path):
    path, log = saved_index(tmp_path)
    xb = unit_vectors(3, seed=2)
    log.append(np.array([11, 12]), xb[:2])
    with open(log.path, "ab") as handle:  # a crash half-way through the next record
        handle.write(b"\x0d\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03")
    assert VectorIndex.load(path, "m1", 16).ids().tolist() == list(range(1, 13))
    log.append(np.array([13]), xb[2:])
    np.testing.assert_array_equal(VectorIndex.load(path, "m1", 16).vectors()[1][-3:], xb)


def test_a_damaged_record_is_skipped_and_the_records_after_it_kept(tmp_path):
    path, log = saved_index(tmp_path)
    log.append(np.array([11, 12, 13]), unit_vectors(3, seed=3))
    data = bytearray(log.path.read_bytes())
    data[-log.record_bytes - 5] ^= 0xFF  # inside record 12's vector
    log.path.write_bytes(bytes(data))
    records = log.read()
    assert records.ids.tolist() == [11, 13] and records.bad == 1


def test_a_log_of_another_model_is_ignored_then_replaced(tmp_path):
    path, _ = saved_index(tmp_path)
    VectorLog(log_path(path), "m0", 16).append(np.array([99]), unit_vectors(1))
    assert 99 not in VectorIndex.load(path, "m1", 16).ids()
    log = VectorLog(log_path(path), "m1", 16)
    log.append(np.array([11]), unit_vectors(1, seed=4))
    assert VectorIndex.load(path, "m1", 16).ids().tolist() == list(range(1, 12))


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from twice.indexer.vector_log import VectorLog

    log = VectorLog(sys.argv[1], "m1", 256)
    rng = np.random.default_rng(0)
    for i in range(1, 1_000_000):
        log.append(np.arange(i * 100, i * 100 + 50), rng.standard_normal((50, 256), dtype=np.float32))
        print(i, flush=True)  # acknowledged: fsynced
    """
)


def test_a_writer_killed_mid_append_keeps_every_acknowledged_add(tmp_path):
    path, _ = saved_index(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(log_path(path))], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    acknowledged = 0
    deadline = time.monotonic() + 60
    while acknowledged < 20 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline() or acknowledged)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acknowledged = max([acknowledged, *(int(line) for line in proc.stdout.read().split())])
    assert acknowledged >= 20
    records = VectorLog(log_path(path), "m1", 256).read()
    got = set((records.ids // 100).tolist())
    assert set(range(1, acknowledged + 1)) <= got, "an acknowledged append was lost"
    assert len(records) % 50 == 0 and records.bad == 0


def test_indexer_appends_without_rewriting_and_folds_on_close(tmp_path, options, embedder):
    writer = Indexer(options, embedder.version, embedder.dim)
    first = writer.add_bytes(image_bytes(make_image(1)), "one")
    writer.add_vectors([first.row.id], embedder.embed_images([first.decoded.image]))
    writer.save()
    stamp = FileStamp.of(options.index_path)
    reader = Indexer(options, embedder.version, embedder.dim)
    assert len(reader.vectors) == 1
    second = writer.add_bytes(image_bytes(make_image(2)), "two")
    writer.append([second.row.id], embedder.embed_images([second.decoded.image]))
    assert FileStamp.of(options.index_path) == stamp, "an append rewrote the index file"
    assert VectorIndex.load(options.index_path).ids().tolist() == [1, 2]
    assert reader.replay_log() == 1 and reader.vectors.ids().tolist() == [1, 2]
    writer.close()
    assert not writer.log.exists()
    assert VectorIndex.load(options.index_path, replay_log=False).ids().tolist() == [1, 2]
    reader.close()  # it appended nothing: no fold, no rewrite
    assert VectorIndex.read_header(options.index_path)["count"] == 2


def test_a_large_log_is_folded_into_the_index_file(tmp_path, options, monkeypatch):
    monkeypatch.setattr("twice.indexer.store.FOLD_MIN_RECORDS", 8)
    writer = Indexer(options, "m1", 16)
    writer.add_vectors(np.arange(1, 21), unit_vectors(20))
    writer.save()
    xb = unit_vectors(6, seed=5)
    for i in range(6):  # the fold comes at max(8, a quarter of the index) records
        writer.append([21 + i], xb[i : i + 1])
    assert VectorIndex.read_header(options.index_path)["count"] == 20 and writer.log.exists()
    writer.append([27, 28, 29], unit_vectors(3, seed=6))
    assert VectorIndex.read_header(options.index_path)["count"] == 29 and not writer.log.exists()
    writer.catalog.close()


def test_an_upload_appends_to_the_log_and_another_worker_sees_it(tmp_path, embedder, capsys):
    folder = tmp_path / "in"
    write_images(folder, 3)
    options = make_options(tmp_path / "data")
    reindex([folder], options, embedder, progress=False)
    stamp = FileStamp.of(options.index_path)
    first, second = (web.create_app(options, embedder=embedder) for _ in range(2))
    a, b = first.test_client(), second.test_client()
    assert b.get("/stats").get_json()["vectors"] == 3  # b holds the index as it was
    data = image_bytes(make_image(77))
    added = a.post("/images", data={"image": (io.BytesIO(data), "new.png")}).get_json()
    assert FileStamp.of(options.index_path) == stamp, "an upload rewrote the index file"
    assert added["id"] in VectorLog(log_path(options.index_path), embedder.version, embedder.dim).read().ids
    hit = b.post("/search?k=1", data={"image": (io.BytesIO(data), "q.png")}).get_json()["results"][0]
    assert hit["id"] == added["id"] and hit["exact"]
    assert web.service_of(second).reloads == 0  # read from the log, not by reloading the index
    assert main(["-q", "--data-dir", str(options.data_dir), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["index"]["count"], status["index_log_records"]) == (3, 1)
    web.service_of(first).close()  # it appended: its close folds the log into the file
    web.service_of(second).close()
    assert not log_path(options.index_path).exists()
    assert added["id"] in VectorIndex.load(options.index_path, replay_log=False).ids()
