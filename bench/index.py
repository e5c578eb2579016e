"""``twice bench index``: the large-collection index (IVF with 8-bit codes) against exact search.

For each size: synthetic clustered 256-d unit vectors (``bench.speed.faiss_dataset``), an index
trained once on a sample and filled shard by shard as a big reindex fills it, then per
``nprobe``: recall@10 against exact top-10, copy@1 (the planted near-copy ranked first) and
one-query top-10 latency with FAISS's threads and with one. Bytes per vector are the index's
own (code + id) and its saved size divided by the count.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from twice.indexer import VectorIndex

from .machine import MemoryProbe, machine_facts
from .results import markdown_table, stamp_lines
from .speed import SpeedConfig, faiss_dataset, recall_at_10, time_search

LOG = logging.getLogger(__name__)

SPECS = {"sq8": {"flat_limit": 0, "compress_limit": 0}, "ivf": {"flat_limit": 0, "compress_limit": 10**12}}


@dataclass
class IndexBenchConfig:
    sizes: tuple[int, ...] = (1_000_000,)
    kinds: tuple[str, ...] = ("sq8",)
    nprobes: tuple[int, ...] = (16, 32, 64, 128)
    queries: int = 1000
    singles: int = 300  # one-query latency is timed on this many of them
    shard: int = 100_000  # vectors added per step
    dim: int = 256
    seed: int = 0


def exact_top10(xb: np.ndarray, xq: np.ndarray) -> np.ndarray:
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    return flat.search(xq, 10)[1]


def measure_size(n: int, kind: str, config: IndexBenchConfig) -> list[dict]:
    speed = SpeedConfig(faiss_dim=config.dim, faiss_queries=config.queries)
    xb, xq, planted = faiss_dataset(n, speed, config.seed)
    gt = exact_top10(xb, xq)
    with MemoryProbe() as probe:
        started = time.perf_counter()
        index = VectorIndex.trained("bench", xb, expected=n, **SPECS[kind])
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, n, config.shard):
            index.add(np.arange(start, min(n, start + config.shard)), xb[start : start + config.shard])
        add_s = time.perf_counter() - started
    saved_bytes = len(faiss.serialize_index(index.index))
    base = {
        "n": n,
        "index": index.index_type,
        "bytes_per_vector": index.bytes_per_vector,
        "saved_bytes_per_vector": saved_bytes / n,
        "train_s": train_s,
        "add_s": add_s,
        "peak_mib": probe.peak_mib,
    }
    rows = []
    for nprobe in config.nprobes:
        index.nprobe = nprobe
        I, figures = time_search(index, xq, 10, min(config.singles, len(xq)))
        rows.append(
            {
                **base,
                "nprobe": nprobe,
                "recall@10": recall_at_10(I, gt),
                "copy@1": float(np.mean(I[:, 0] == planted)),
                **figures,
            }
        )
        LOG.info("%s n=%d nprobe=%d recall@10 %.3f", index.index_type, n, nprobe, rows[-1]["recall@10"])
    del index, xb
    gc.collect()
    return rows


def run_index_bench(config: IndexBenchConfig, command: str) -> tuple[dict, str]:
    unknown = set(config.kinds) - set(SPECS)
    if unknown:
        raise ValueError(f"unknown index kind(s) {sorted(unknown)}; choose from {', '.join(SPECS)}")
    payload = {"kind": "index", "command": command, "machine": machine_facts(), "config": asdict(config)}
    payload["rows"] = [
        row for n in config.sizes for kind in config.kinds for row in measure_size(n, kind, config)
    ]
    return payload, index_markdown(payload)


def index_markdown(payload: dict) -> str:
    cfg = payload["config"]
    lines = [
        "## Large-collection index",
        "",
        *stamp_lines(payload),
        "",
        f"{cfg['dim']}-d clustered synthetic unit vectors; {cfg['queries']} queries, each a near-copy"
        " of one database vector; recall@10 against exact top-10 (inner product); latency of one"
        " top-10 query (p50 / p95 ms) with FAISS's threads and with one.",
        "",
    ]
    rows = [
        [
            f"{r['n']:,}",
            r["index"],
            r["nprobe"],
            r["bytes_per_vector"],
            round(r["saved_bytes_per_vector"], 1),
            r["recall@10"],
            r["copy@1"],
            f"{r['single_p50_ms']:.2f} / {r['single_p95_ms']:.2f}",
            f"{r['single_p50_ms_1thread']:.2f} / {r['single_p95_ms_1thread']:.2f}",
            round(r["train_s"], 1),
            round(r["add_s"], 1),
            r["peak_mib"],
        ]
        for r in payload["rows"]
    ]
    headers = ["n", "index", "nprobe", "B/vector", "saved B/vector", "recall@10", "copy@1"]
    headers += ["ms (threads)", "ms (1 thread)", "train s", "add s", "peak MiB"]
    return "\n".join([*lines, markdown_table(headers, rows), ""])
