"""``twice bench speed``: model forward rate, reindex throughput and where its time goes, the
re-run of an unchanged folder, upload latency by index size, query latency (in process and over
HTTP) and FAISS search speed/recall, each with its peak memory, on this machine."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from twice.augment import make_collection
from twice.imageio import decode_image, read_file_bytes
from twice.indexer import Indexer, VectorIndex, reindex
from twice.indexer.schema import ImageRow
from twice.indexer.store import image_hashes, phash_version
from twice.indexer.vectors import ivf_nlist
from twice.model import Embedder
from twice.model.embedder import cpu_has_fast_bf16
from twice.model.int8 import OrtNet
from twice.search import SearchEngine

from .machine import MemoryProbe, machine_facts
from .results import markdown_table, stamp_lines

LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SpeedConfig:
    """What to measure and how big; ``quick_config()`` is the CI smoke-test size."""

    batch_sizes: tuple[int, ...] = (1, 32)
    repeat: int = 2  # timed forward passes per setting (after one warm-up)
    min_seconds: float = 5.0  # ... and at least this long
    bf16: str = "auto"  # auto: only where the CPU has fast bf16 | always | never
    reindex_images: int = 64
    reindex_size: tuple[int, int] = (640, 480)
    queries: int = 20
    http: bool = True
    cli_process: bool = True  # also time one whole `twice search` process
    faiss_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    faiss_dim: int = 256
    faiss_queries: int = 1000
    nprobes: tuple[int, ...] = (1, 4, 16, 64, 256)
    faiss_data: str = "clustered"  # clustered | uniform
    rerun_files: int = 100_000  # tiny files for the unchanged re-run
    upload_sizes: tuple[int, ...] = (1_000, 100_000)  # index sizes for POST /images
    uploads: int = 20  # timed uploads per index size
    parts: tuple[str, ...] = ("forward", "reindex", "query", "faiss")
    work_dir: Path | None = None
    progress: bool = True
    quick: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_config(cls, **overrides) -> SpeedConfig:
        base = cls(
            repeat=1,
            min_seconds=0.0,
            reindex_images=12,
            reindex_size=(160, 120),
            queries=4,
            faiss_sizes=(2_000, 10_000),
            faiss_queries=100,
            nprobes=(1, 8),
            rerun_files=500,
            upload_sizes=(100, 1_000),
            uploads=3,
            quick=True,
        )
        return cls(**{**asdict(base), **overrides})


# model forward ------------------------------------------------------------------------------


def forward_settings(
    embedder: Embedder, bf16: str
) -> tuple[list[tuple[str, str, torch.dtype | None]], list[str]]:
    """(label, memory format, autocast dtype) per setting to time, and notes on what was left out."""
    if embedder.device.type == "cuda":
        return [("fp32", "contiguous", None), ("fp16 autocast", "contiguous", torch.float16)], []
    settings = [("fp32", "contiguous", None), ("fp32 channels-last", "channels_last", None)]
    fast = cpu_has_fast_bf16()
    if bf16 == "always" or (bf16 == "auto" and fast):
        settings.append(("bf16 autocast channels-last", "channels_last", torch.bfloat16))
        return settings, [] if fast else [
            "bf16 measured on a CPU without AVX-512-bf16/AMX: emulated, expect it far slower than fp32"
        ]
    return settings, [
        "bf16 autocast skipped: this CPU has no AVX-512-bf16/AMX (bf16 would be emulated,"
        " several times slower than fp32); `--bf16 always` measures it anyway"
    ]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def time_forward(
    net: torch.nn.Module,
    device: torch.device,
    batch: int,
    size: int,
    memory: str,
    dtype: torch.dtype | None,
    repeat: int,
    min_seconds: float,
) -> dict:
    fmt = torch.channels_last if memory == "channels_last" else torch.contiguous_format
    net.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return time_calls(lambda: (net(x), _sync(device)), batch, repeat, min_seconds)


def time_int8(int8: OrtNet, batch: int, size: int, repeat: int, min_seconds: float) -> dict:
    """``time_forward`` for the ONNX Runtime int8 network."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    return time_calls(lambda: int8(x), batch, repeat, min_seconds)


def time_calls(run, batch: int, repeat: int, min_seconds: float) -> dict:
    """Images/s of ``run()`` (one batch): the median of ``repeat`` calls or more, after a warm-up."""
    with MemoryProbe() as probe:
        run()  # warm-up: allocator, kernels, oneDNN primitive cache
        times = []
        while len(times) < repeat or sum(times) < min_seconds:
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    per_batch = float(np.median(times))
    return {
        "batch": batch,
        "images_per_s": batch / per_batch,
        "ms_per_batch": 1000 * per_batch,
        "runs": len(times),
        "peak_mib": probe.peak_mib,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_forward(embedder: Embedder, config: SpeedConfig) -> list[dict]:
    settings, notes = forward_settings(embedder, config.bf16)
    config.notes += notes
    rows = []
    threads = torch.get_num_threads()
    runs = [(label, memory, dtype, threads) for label, memory, dtype in settings]
    if embedder.device.type == "cpu" and threads > 1:
        # On a busy machine torch's threads wait for each other: one thread can be far faster.
        runs.append(("fp32 channels-last, 1 thread", "channels_last", None, 1))
    for label, memory, dtype, n_threads in runs:
        for batch in config.batch_sizes:
            LOG.info("forward: %s, batch %d", label, batch)
            with torch_threads(n_threads):
                row = time_forward(
                    embedder.net,
                    embedder.device,
                    batch,
                    embedder.image_size,
                    memory,
                    dtype,
                    config.repeat,
                    config.min_seconds,
                )
            rows.append({"device": str(embedder.device), "setting": label, "threads": n_threads, **row})
    rows += measure_int8_forward(embedder, config)
    embedder.net.to(
        memory_format=torch.channels_last if embedder.device.type == "cpu" else torch.contiguous_format
    )
    return rows


def measure_int8_forward(embedder: Embedder, config: SpeedConfig) -> list[dict]:
    """The int8 network's rows, where the embedder runs it (``precision`` int8, or ``auto`` on a
    CPU with VNNI and ONNX Runtime)."""
    if embedder.int8 is None:
        config.notes.append(
            f"int8 not measured: the embedder runs {embedder.precision} (TWICE_PRECISION=int8 measures it)"
        )
        return []
    rows = []
    for batch in config.batch_sizes:
        LOG.info("forward: int8 (ONNX Runtime), batch %d", batch)
        row = time_int8(embedder.int8, batch, embedder.image_size, config.repeat, config.min_seconds)
        rows.append(
            {"device": "cpu", "setting": "int8 (ONNX Runtime)", "threads": torch.get_num_threads(), **row}
        )
    return rows


def bare_rate(embedder: Embedder, batch: int) -> float:
    """Images/s of one bare forward pass in the embedder's own setting (memory format, precision)."""
    if embedder.int8 is not None:
        return time_int8(embedder.int8, batch, embedder.image_size, 1, 0.0)["images_per_s"]
    memory = "channels_last" if embedder.device.type == "cpu" else "contiguous"
    row = time_forward(
        embedder.net, embedder.device, batch, embedder.image_size, memory, embedder.autocast_dtype, 1, 0.0
    )
    return row["images_per_s"]


# reindex and queries ------------------------------------------------------------------------


def measure_reindex(options, embedder: Embedder, config: SpeedConfig, work: Path) -> tuple[dict, list[Path]]:
    folder = work / "jpegs"
    paths = make_collection(folder, config.reindex_images, seed=7, size=config.reindex_size)
    # The bare rate is taken right before and after, so a busy machine slows both alike.
    before = bare_rate(embedder, options.batch_size)
    with MemoryProbe() as probe:
        summary = reindex([folder], options, embedder, progress=config.progress)
    bare = (before + bare_rate(embedder, options.batch_size)) / 2
    rate = summary.added / summary.seconds if summary.seconds else None
    return {
        "images": summary.added,
        "size": f"{config.reindex_size[0]}x{config.reindex_size[1]} JPEG",
        "seconds": summary.seconds,
        "images_per_s": rate,
        "batch_size": options.batch_size,
        "precision": embedder.precision,
        # reindex decodes in the calling process below two batches of files
        "workers": options.workers if len(paths) >= 2 * options.batch_size else 0,
        "peak_mib": probe.peak_mib,
        "bare_images_per_s": bare,
        "ratio_to_bare": rate / bare if rate and bare else None,
        "stages_s": _stages(summary),
    }, paths


def _stages(summary) -> dict | None:
    stages = getattr(summary, "stages", None)  # absent before the stage profile (bench of older code)
    return stages.to_dict() if stages is not None else None


# re-runs and uploads --------------------------------------------------------------------------


class RandomEmbedder:
    """Stands in for the model while a bench fills a data directory: the real model's version
    and size, random unit vectors (their values do not matter to what is timed)."""

    def __init__(self, embedder: Embedder) -> None:
        self.version, self.dim, self.draft_side = embedder.version, embedder.dim, 16
        self.preprocess = no_pixels
        self.rng = np.random.default_rng(0)

    def embed_tensors(self, batch) -> np.ndarray:
        return unit_rows(self.rng.standard_normal((len(batch), self.dim), dtype=np.float32))


def no_pixels(_image, trimmed: bool = False) -> torch.Tensor:
    return torch.zeros(1)


def write_tiny_files(folder: Path, n: int) -> None:
    """``n`` distinct 8x8 PNGs, a thousand per folder."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(sub / f"{i:07d}.png")


def measure_rerun(options, embedder: Embedder, config: SpeedConfig, work: Path) -> dict:
    """A second reindex over an unchanged folder of ``rerun_files`` tiny files: in this process
    (model loaded) and as a whole ``twice reindex`` process. The first run, which fills the
    catalog and the index, embeds with random vectors: only the re-run is timed."""
    folder = work / "tiny"
    write_tiny_files(folder, config.rerun_files)
    options = options.with_overrides(data_dir=work / "rerun-data")
    first = reindex([folder], options, RandomEmbedder(embedder), progress=config.progress)
    again = reindex([folder], options, embedder, progress=False)
    argv = [sys.executable, "-m", "twice", "-q", "reindex", str(folder), "--json"]
    started = time.perf_counter()
    done = subprocess.run(
        argv, env={**os.environ, **options.to_env()}, capture_output=True, text=True, timeout=3600, cwd=ROOT
    )
    cli_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"twice reindex failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    cli = json.loads(done.stdout)
    return {
        "files": config.rerun_files,
        "first_s": first.seconds,
        "first_added": first.added,
        "rerun_s": again.seconds,
        "rerun_unchanged": getattr(again, "unchanged", None),
        "rerun_already": again.already,
        "cli_rerun_s": cli_seconds,
        "cli_reindex_s": cli["seconds"],
    }


def fill_data_dir(options, embedder: Embedder, n: int) -> None:
    """``n`` catalogued images with random vectors and hashes, saved as one index file: one
    real stored image stands behind every row (search reads rows, and a file for evidence)."""
    rng = np.random.default_rng(n)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode_png(image)
    indexer = Indexer(options, embedder.version, embedder.dim)
    stored = indexer.store.put(data, "f" * 64, "PNG")
    hashes = image_hashes(image)
    rows = [
        {
            "sha256": f"{i:064x}",
            "stored_path": stored,
            "source": f"bench:{i}",
            "width": 64,
            "height": 64,
            "format": "PNG",
            "bytes": len(data),
            **hashes,
            "phash": int(rng.integers(-(2**63), 2**63 - 1)),
            "phash_version": phash_version(),
        }
        for i in range(1, n + 1)
    ]
    from sqlalchemy import insert

    with indexer.catalog.session() as session:
        for start in range(0, n, 2000):
            session.execute(insert(ImageRow), rows[start : start + 2000])
    ids = indexer.catalog.ids()
    indexer.add_vectors(ids, unit_rows(rng.standard_normal((len(ids), embedder.dim), dtype=np.float32)))
    indexer.save()
    indexer.close()


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def measure_uploads(options, embedder: Embedder, config: SpeedConfig, work: Path) -> list[dict]:
    """``POST /images`` of new images (Flask's test client over the real route) into data
    directories of each ``upload_sizes`` vectors, upload by upload in turn, so that load on the
    machine hits every size alike."""
    from twice.web import app as web

    clients, apps = [], []
    for n in config.upload_sizes:
        LOG.info("uploads: filling a data directory with %d vectors", n)
        sized = options.with_overrides(data_dir=work / f"upload-{n}")
        fill_data_dir(sized, embedder, n)
        apps.append(web.create_app(sized, embedder=embedder))
        clients.append(apps[-1].test_client())
    rng = np.random.default_rng(1)
    times: list[list[float]] = [[] for _ in clients]
    try:
        for i in range(config.uploads + 1):  # the first round loads model and index: not timed
            for client, timed in zip(clients, times, strict=True):
                data = encode_png(Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)))
                started = time.perf_counter()
                reply = client.post("/images", data={"image": (io.BytesIO(data), f"up{i}.png")})
                if i:
                    timed.append(time.perf_counter() - started)
                if reply.status_code != 201:
                    raise RuntimeError(f"POST /images answered {reply.status_code}: {reply.data[:300]}")
    finally:
        for app in apps:
            web.service_of(app).close()
    rows = []
    for n, timed in zip(config.upload_sizes, times, strict=True):
        writes = measure_index_writes(options.with_overrides(data_dir=work / f"upload-{n}"), embedder, 5)
        rows.append({"vectors": n, **latency_figures(timed), **writes})
    return rows


def measure_index_writes(options, embedder: Embedder, count: int) -> dict:
    """The durable write of one new vector, both ways, in the same data directory: rewriting
    the whole index file (what an upload did before the write-ahead log) and appending to the
    log (what it does now). p50 of ``count`` each, in turn."""
    indexer = Indexer(options, embedder.version, embedder.dim)
    rng = np.random.default_rng(2)
    next_id = int(indexer.vectors.ids().max()) + 1
    rewrite: list[float] = []
    append: list[float] = []
    # Indexer.append is absent from code before the write-ahead log (a bench of older code)
    ways = [(rewrite, _rewrite_one)] + ([(append, Indexer.append)] if hasattr(Indexer, "append") else [])
    try:
        for _ in range(count):
            for timed, write in ways:
                ids = np.array([next_id], dtype=np.int64)
                xb = unit_rows(rng.standard_normal((1, embedder.dim), dtype=np.float32))
                started = time.perf_counter()
                write(indexer, ids, xb)
                timed.append(time.perf_counter() - started)
                next_id += 1
    finally:
        indexer.close()
    return {
        "rewrite_p50_ms": float(np.median(rewrite) * 1000),
        "append_p50_ms": float(np.median(append) * 1000) if append else None,
    }


def _rewrite_one(indexer: Indexer, ids: np.ndarray, xb: np.ndarray) -> None:
    indexer.add_vectors(ids, xb)
    indexer.save()


def make_query_files(paths: list[Path], count: int, folder: Path) -> list[Path]:
    """Re-encoded copies (JPEG quality 80) of indexed images: near-copies, never the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        source = paths[i % len(paths)]
        target = folder / f"query-{i:04d}.jpg"
        with Image.open(source) as image:
            image.convert("RGB").save(target, format="JPEG", quality=80)
        out.append(target)
    return out


def latency_figures(times_s: list[float]) -> dict:
    ms = np.array(times_s) * 1000
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
    }


def measure_engine_latency(options, embedder: Embedder, queries: list[Path]) -> dict:
    """``SearchEngine.search_file``, the path ``twice search`` takes, model and index loaded once;
    and beside it, query by query so that load on the machine hits both alike, the CNN-only path
    (``cnn_only_search``): what the exact-bytes and hash evidence cost on top of the CNN."""
    with MemoryProbe() as probe:
        engine = SearchEngine.open(options, embedder)
        # As after `twice calibrate` on a trained model: the clear-match rule is on, so search
        # pays for its deeper FAISS list and the family lookup (the values do not change the cost).
        engine.thresholds = replace(engine.thresholds, clear_score=0.5, clear_margin=0.3)
        try:
            engine.search_file(queries[0], 10)  # warm-up
            cnn_only_search(engine, queries[0], 10)
            times, cnn_times = [], []
            for path in queries:
                started = time.perf_counter()
                engine.search_file(path, 10)
                times.append(time.perf_counter() - started)
                started = time.perf_counter()
                cnn_only_search(engine, path, 10)
                cnn_times.append(time.perf_counter() - started)
        finally:
            engine.close()
    cnn = latency_figures(cnn_times)
    return {
        **latency_figures(times),
        "peak_mib": probe.peak_mib,
        "cnn_only": cnn,
        "ratio_to_cnn_only_p50": float(np.median(times) / np.median(cnn_times)),
    }


def cnn_only_search(engine: SearchEngine, path: Path, k: int) -> list:
    """The CNN-only query: read, decode, embed, FAISS top-k, catalog rows (no hash, no evidence)."""
    options = engine.options
    data = read_file_bytes(path, options.max_image_bytes)
    decoded = decode_image(
        data, str(path), options.max_image_bytes, options.max_image_pixels, engine.embedder.draft_side
    )
    D, I = engine.vectors.search(engine.embedder.embed_images([decoded.image]), k)
    rows = engine.catalog.get_many(int(i) for i in I[0] if i >= 0)
    return [(rows[int(i)], float(d)) for d, i in zip(D[0], I[0], strict=True) if int(i) in rows]


def measure_cli_process(options, query: Path) -> dict:
    """One whole ``twice search`` process: start, load model and index, search, print."""
    argv = [
        sys.executable,
        "-m",
        "twice",
        "-q",
        "--data-dir",
        str(options.data_dir),
        "search",
        str(query),
        "--json",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        argv, env={**os.environ, **options.to_env()}, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"twice search failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {"seconds": seconds}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(options, work: Path, timeout: float = 300.0):
    """``twice serve`` (one worker) on a free 127.0.0.1 port; yields the base URL, then stops it."""
    import requests

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "twice",
        "-q",
        "--data-dir",
        str(options.data_dir),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-dir",
        str(work / "logs"),
    ]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **options.to_env()},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"twice serve exited ({proc.returncode}): {proc.stderr.read().decode()[-500:]}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"twice serve did not become healthy within {timeout:.0f}s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_http_latency(options, queries: list[Path], work: Path) -> dict:
    import requests

    with served(options, work) as url:
        session = requests.Session()

        def post(path: Path) -> None:
            with open(path, "rb") as handle:
                reply = session.post(
                    f"{url}/search",
                    files={"image": (path.name, handle, "image/jpeg")},
                    data={"k": "10"},
                    timeout=300,
                )
            if reply.status_code != 200:
                raise RuntimeError(f"POST /search answered {reply.status_code}: {reply.text[:300]}")

        post(queries[0])  # warm-up: the worker's first request
        times = []
        for path in queries:
            started = time.perf_counter()
            post(path)
            times.append(time.perf_counter() - started)
    return latency_figures(times)


# FAISS ---------------------------------------------------------------------------------------


CLUSTER_SIZE = 1000  # database vectors per cluster, on average
CLUSTER_SPREAD = 0.5  # noise norm around a unit centre: cosine to the centre about 0.9
COPY_NOISE = 0.1  # a query is a near-copy of one database vector: cosine about 0.995


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noise(rng: np.random.Generator, shape: tuple[int, int], norm: float) -> np.ndarray:
    """Gaussian noise whose rows have about this norm."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(norm / np.sqrt(shape[1]))


def faiss_dataset(n: int, config: SpeedConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xb, xq, planted): database unit vectors, clustered like image embeddings or uniform on the
    sphere (the worst case), and queries that are near-copies of the database vectors ``planted``,
    because finding copies is what twice searches for."""
    if config.faiss_data not in ("clustered", "uniform"):
        raise ValueError(f"faiss data must be clustered or uniform, not {config.faiss_data!r}")
    rng = np.random.default_rng(seed)
    d = config.faiss_dim
    if config.faiss_data == "uniform":
        xb = unit_rows(rng.standard_normal((n, d), dtype=np.float32))
    else:
        centres = unit_rows(rng.standard_normal((max(10, n // CLUSTER_SIZE), d), dtype=np.float32))
        xb = unit_rows(centres[rng.integers(0, len(centres), n)] + noise(rng, (n, d), CLUSTER_SPREAD))
    planted = rng.choice(n, size=min(n, config.faiss_queries), replace=False)
    xq = unit_rows(xb[planted] + noise(rng, (len(planted), d), COPY_NOISE))
    return xb, xq, planted


def time_search(index: VectorIndex, xq: np.ndarray, k: int, singles: int) -> tuple[np.ndarray, dict]:
    """Batch q/s with FAISS's default threads; one-query latency with those threads and with one.

    On a busy machine OpenMP threads that wait for each other make one-query searches of a
    flat index tens of times slower, so both figures are kept.
    """
    import faiss

    started = time.perf_counter()
    _D, I = index.search(xq, k)
    batch_s = time.perf_counter() - started
    figures = {"qps_batch": len(xq) / batch_s}
    threads = faiss.omp_get_max_threads()
    for label, n_threads in (("", threads), ("_1thread", 1)):
        faiss.omp_set_num_threads(n_threads)
        try:
            single = latency_figures([_timed(index.search, q[None, :], k) for q in xq[:singles]])
        finally:
            faiss.omp_set_num_threads(threads)
        figures[f"single_p50_ms{label}"] = single["p50_ms"]
        figures[f"single_p95_ms{label}"] = single["p95_ms"]
    figures["omp_threads"] = threads
    return I, figures


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def recall_at_10(I: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / gt.shape[1] for a, b in zip(I, gt, strict=True)]))


def measure_faiss_size(n: int, config: SpeedConfig, gpu: bool) -> list[dict]:
    xb, xq, planted = faiss_dataset(n, config)
    ids = np.arange(n, dtype=np.int64)
    singles = min(200, len(xq))
    rows = []
    with MemoryProbe() as probe:
        started = time.perf_counter()
        flat = VectorIndex("bench", config.faiss_dim, flat_limit=n)
        flat.add(ids, xb)
        build = time.perf_counter() - started
        if gpu:
            flat.to_gpu()
        gt, figures = time_search(flat, xq, 10, singles)
        figures["copy@1"] = float(np.mean(gt[:, 0] == planted))
    rows.append(
        {
            "n": n,
            "index": "IDMap2,Flat",
            "nprobe": None,
            "recall@10": 1.0,
            "build_s": build,
            "peak_mib": probe.peak_mib,
            "gpu": gpu,
            **figures,
        }
    )
    del flat
    gc.collect()
    with MemoryProbe() as probe:
        started = time.perf_counter()
        ivf = VectorIndex("bench", config.faiss_dim, flat_limit=0)  # the first add converts to IVF
        ivf.add(ids, xb)
        build = time.perf_counter() - started
        if gpu:
            ivf.to_gpu()
        for nprobe in config.nprobes:
            if nprobe > ivf_nlist(n):
                continue
            ivf.nprobe = nprobe
            if gpu:
                ivf.to_gpu()  # rebuilds the GPU copy, which takes nprobe when it is made
            I, figures = time_search(ivf, xq, 10, singles)
            rows.append(
                {
                    "n": n,
                    "index": ivf.index_type,
                    "nprobe": nprobe,
                    "recall@10": recall_at_10(I, gt),
                    "copy@1": float(np.mean(I[:, 0] == planted)),
                    "build_s": build,
                    "gpu": gpu,
                    **figures,
                }
            )
    for row in rows[1:]:
        row["peak_mib"] = probe.peak_mib
    del ivf, xb
    gc.collect()
    return rows


def measure_faiss(config: SpeedConfig) -> list[dict]:
    import faiss

    rows = []
    for gpu in [False] + ([True] if faiss.get_num_gpus() > 0 else []):
        for n in config.faiss_sizes:
            LOG.info("faiss: %d vectors%s", n, " on GPU" if gpu else "")
            rows += measure_faiss_size(n, config, gpu)
    return rows


# the run --------------------------------------------------------------------------------------

SPEED_PARTS = ("forward", "reindex", "rerun", "upload", "query", "faiss")
UPLOAD_HEADERS = ["vectors", "uploads", "p50 ms", "p95 ms", "mean ms", "rewrite p50 ms", "append p50 ms"]


def run_speed(config: SpeedConfig, options, command: str) -> tuple[dict, str]:
    """Measure every part in ``config.parts``; returns (JSON payload, markdown)."""
    unknown = set(config.parts) - set(SPEED_PARTS)
    if unknown:
        raise ValueError(f"unknown speed part(s) {sorted(unknown)}; choose from {', '.join(SPEED_PARTS)}")
    work = Path(config.work_dir) if config.work_dir else Path(tempfile.mkdtemp(prefix="twice-bench-speed-"))
    options = options.with_overrides(data_dir=work / "data")
    payload: dict = {
        "kind": "speed",
        "command": command,
        "machine": machine_facts(),
        "config": {k: v for k, v in asdict(config).items() if k not in ("notes", "progress")},
    }
    try:
        needs_model = {"forward", "reindex", "query", "rerun", "upload"} & set(config.parts)
        embedder = Embedder.from_options(options) if needs_model else None
        if embedder is not None:
            payload["model"] = embedder.version
            payload["embedder"] = embedder.describe()
        if "forward" in config.parts:
            payload["forward"] = measure_forward(embedder, config)
        if {"reindex", "query"} & set(config.parts):
            payload["reindex"], paths = measure_reindex(options, embedder, config, work)
        if "rerun" in config.parts:
            payload["rerun"] = measure_rerun(options, embedder, config, work)
        if "upload" in config.parts:
            payload["upload"] = measure_uploads(options, embedder, config, work)
        if "query" in config.parts:
            queries = make_query_files(paths, config.queries, work / "queries")
            payload["query"] = {"engine": measure_engine_latency(options, embedder, queries)}
            payload["query"]["engine"]["threads"] = torch.get_num_threads()
            if embedder.device.type == "cpu" and torch.get_num_threads() > 1:
                with torch_threads(1):
                    payload["query"]["engine_1thread"] = measure_engine_latency(options, embedder, queries)
            if config.cli_process:
                payload["query"]["cli_process"] = measure_cli_process(options, queries[0])
            if config.http:
                payload["query"]["http"] = measure_http_latency(options, queries, work)
        if "faiss" in config.parts:
            payload["faiss"] = measure_faiss(config)
    finally:
        if config.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    payload["notes"] = config.notes
    return payload, speed_markdown(payload)


def speed_markdown(payload: dict) -> str:
    lines = ["## Speed", "", *stamp_lines(payload), ""]
    if "forward" in payload:
        e = payload["embedder"]
        lines += [f"Model forward pass (bare network, {e['image_size']} px input, {e['device']}):", ""]
        rows = [
            [r["setting"], r["batch"], r["images_per_s"], r["ms_per_batch"], r["runs"], r["peak_mib"]]
            for r in payload["forward"]
        ]
        lines += [
            markdown_table(["setting", "batch", "images/s", "ms/batch", "runs", "peak MiB"], rows, 2),
            "",
        ]
    if "reindex" in payload:
        r = payload["reindex"]
        lines += [
            f"Reindex from {r['images']} {r['size']} files on disk ({r.get('precision', '?')},"
            f" batch {r['batch_size']},"
            f" {r['workers']} decode workers): **{_f(r['images_per_s'])} images/s**, "
            f"{_f(r['ratio_to_bare'])} × the bare forward rate at that batch, timed just before and after"
            f" ({_f(r['bare_images_per_s'])} images/s);"
            f" peak {r['peak_mib']} MiB.",
            "",
        ]
        if r.get("stages_s"):
            st = r["stages_s"]
            lines += [
                "Where the reindex time went (seconds; decode, hash and store summed over the decode"
                " workers, which run beside the embedding; write runs in a thread beside it; wait is"
                " the embedding loop waiting for decoded images):",
                "",
                markdown_table(list(st), [list(st.values())], 2),
                "",
            ]
    if "rerun" in payload:
        r = payload["rerun"]
        lines += [
            f"Re-run over an unchanged folder of {r['files']:,} tiny files: {_f(r['rerun_s'])} s in process"
            f" ({r['rerun_unchanged']} unchanged, not read); a whole `twice reindex` process"
            f" {_f(r['cli_rerun_s'])} s (its own figure {_f(r['cli_reindex_s'])} s). First run, random"
            f" vectors: {_f(r['first_s'])} s.",
            "",
        ]
    if "upload" in payload:
        rows = [
            [f"{r['vectors']:,}", r["n"], r["p50_ms"], r["p95_ms"], r["mean_ms"]]
            + [r.get("rewrite_p50_ms"), r.get("append_p50_ms")]
            for r in payload["upload"]
        ]
        lines += [
            "`POST /images` of a new image (Flask test client over the real route), by index size,"
            " the sizes in turn upload by upload:",
            "",
            markdown_table(UPLOAD_HEADERS, rows, 1),
            "",
            "rewrite / append: the durable write of one new vector alone, by rewriting the whole index"
            " file (as an upload did before the write-ahead log) or by appending it to the log (as now).",
            "",
        ]
    if "query" in payload:
        q = payload["query"]
        rows = [
            [
                f"SearchEngine.search_file (in process, {q['engine'].get('threads', '?')} torch threads)",
                q["engine"]["n"],
                q["engine"]["p50_ms"],
                q["engine"]["p95_ms"],
                q["engine"]["peak_mib"],
            ]
        ]
        if "cnn_only" in q["engine"]:
            cnn = q["engine"]["cnn_only"]
            rows.append(
                ["CNN only: decode, embed, FAISS top-10, rows", cnn["n"], cnn["p50_ms"], cnn["p95_ms"], None]
            )
        if "engine_1thread" in q:
            one = q["engine_1thread"]
            rows.append(
                [
                    "SearchEngine.search_file (in process, 1 torch thread)",
                    one["n"],
                    one["p50_ms"],
                    one["p95_ms"],
                    one["peak_mib"],
                ]
            )
            if "cnn_only" in one:
                cnn = one["cnn_only"]
                rows.append(["CNN only, 1 torch thread", cnn["n"], cnn["p50_ms"], cnn["p95_ms"], None])
        if "http" in q:
            rows.append(
                [
                    "POST /search (twice serve, 1 worker)",
                    q["http"]["n"],
                    q["http"]["p50_ms"],
                    q["http"]["p95_ms"],
                    None,
                ]
            )
        lines += [
            "Single-query latency, top-10, on the reindexed collection (search with the clear-match"
            " rule on, as after `twice calibrate`):",
            "",
        ]
        lines += [markdown_table(["path", "queries", "p50 ms", "p95 ms", "peak MiB"], rows, 1), ""]
        ratios = [
            f"{label}: {q[key]['ratio_to_cnn_only_p50']:.2f}×"
            for key, label in (("engine", "default threads"), ("engine_1thread", "1 thread"))
            if key in q and "ratio_to_cnn_only_p50" in q[key]
        ]
        if ratios:
            lines += [
                "Whole search (exact bytes + hash + CNN evidence) over the CNN-only path at p50,"
                " timed query by query in turn: " + "; ".join(ratios) + ".",
                "",
            ]
        if "cli_process" in q:
            seconds = q["cli_process"]["seconds"]
            lines += [
                f"A whole `twice search` process (start, load model and index, search): {seconds:.1f} s.",
                "",
            ]
    if "faiss" in payload:
        cfg = payload["config"]
        lines += [
            f"FAISS, {cfg['faiss_dim']}-d {cfg['faiss_data']} synthetic unit vectors; {cfg['faiss_queries']}"
            " queries, each a near-copy (cosine ~0.995) of one database vector; top-10. recall@10:"
            " overlap with exact search; copy@1: the copied vector ranked first:",
            "",
        ]
        rows = [
            [
                f"{r['n']:,}",
                r["index"] + (" (GPU)" if r["gpu"] else ""),
                r["nprobe"],
                r["recall@10"],
                r["copy@1"],
                r["qps_batch"],
                r["single_p50_ms"],
                r["single_p50_ms_1thread"],
                r["build_s"],
                r["peak_mib"],
            ]
            for r in payload["faiss"]
        ]
        headers = [
            "vectors",
            "index",
            "nprobe",
            "recall@10",
            "copy@1",
            "q/s (batch)",
            "1-query p50 ms",
            "1-query p50 ms, 1 thread",
            "build s",
            "peak MiB",
        ]
        lines += [markdown_table(headers, rows, 3), ""]
    lines += [f"- note: {note}" for note in payload.get("notes", [])]
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
