"""``twice bench report``: the duplicate report at scale, on synthetic collections.

Random unit vectors plus planted near-duplicate groups go into a real catalog and saved index;
the real ``build_report`` then runs a full report, 1 % more vectors are added, and an
incremental report runs. Each stage runs in a fresh interpreter, so its peak RSS is its own.
There are no image files behind the rows, so no hash pairs: the figures are the CNN side.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from twice.indexer import Catalog, ImageRow, VectorIndex
from twice.indexer.schema import utcnow
from twice.options import Options
from twice.search.pairs import METHODS, plant_groups
from twice.search.report import build_report
from twice.search.report_changes import last_run

from .machine import machine_facts
from .results import markdown_table, stamp_lines

LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODEL = "bench-synthetic"
INDEX_KINDS = ("flat", "ivf")
MIN_SIZE = 100


@dataclass
class ReportConfig:
    """Which synthetic collections to report on."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    indexes: tuple[str, ...] = INDEX_KINDS
    dim: int = 256
    method: str = "knn"
    nprobe: int | None = None  # IVF lists searched per vector (None: the index's default)
    work_dir: Path | None = None  # the collections are built in a temporary folder here
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < MIN_SIZE:
            sizes = ",".join(map(str, self.sizes))
            raise ValueError(f"--sizes values must be at least {MIN_SIZE}, got {sizes}")
        unknown = [k for k in self.indexes if k not in INDEX_KINDS]
        if not self.indexes or unknown:
            raise ValueError(f"--index takes {' and/or '.join(INDEX_KINDS)}, got {','.join(self.indexes)!r}")
        if self.dim < 1:
            raise ValueError(f"--dim must be at least 1, got {self.dim}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ValueError(f"--nprobe must be at least 1, got {self.nprobe}")


def run_report_bench(
    config: ReportConfig, command: str, on_run: Callable[[dict], None] | None = None
) -> tuple[dict, str]:
    """Every size x index kind of ``config``; returns (JSON payload, markdown).

    ``on_run`` sees each run's result as it finishes (the larger ones take minutes).
    """
    payload: dict = {
        "kind": "report",
        "command": command,
        "machine": machine_facts(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "runs": [],
    }
    for n in config.sizes:
        for kind in config.indexes:
            result = run_benchmark(
                n,
                kind,
                dim=config.dim,
                method=config.method,
                workdir=config.work_dir,
                seed=config.seed,
                nprobe=config.nprobe,
            )
            payload["runs"].append(result)
            if on_run is not None:
                on_run(result)
    return payload, report_markdown(payload)


def all_found(payload: dict) -> bool:
    """Whether every run found exactly the planted groups, before and after growing."""
    return all(r["full"]["found_all"] and r["incremental"]["found_all"] for r in payload["runs"])


def bench_row(r: dict) -> str:
    """One run as a terminal line."""
    full, inc = r["full"], r["incremental"]
    grow = full["peak_rss_mb"] - full["rss_before_mb"]
    kind = r["index"] if r["nprobe"] is None else f"{r['index']}/nprobe={r['nprobe']}"
    return (
        f"n={r['n']:>8} {kind:<4} {r['method']:<5} full {full['seconds']:>7.2f}s"
        f" peak {full['peak_rss_mb']:>6.0f} MB (+{grow:.0f} over imports) groups {full['groups_found']:>6}"
        f" all found {full['found_all']}; +{r['grow']['added']} vectors: incremental {inc['seconds']:>6.2f}s"
        f" all found {inc['found_all']}; recall {full['recall']}"
    )


def report_markdown(payload: dict) -> str:
    headers = [
        "vectors",
        "index",
        "method",
        "full report (s)",
        "peak memory, report's own (MB)",
        "added",
        "incremental (s)",
        "planted groups found (full / incremental)",
        "variant pairs recovered",
    ]
    rows = []
    for r in payload["runs"]:
        full, inc = r["full"], r["incremental"]
        rows.append(
            [
                r["n"],
                r["index"] if r["nprobe"] is None else f"{r['index']}, nprobe {r['nprobe']}",
                r["method"],
                full["seconds"],
                round(full["peak_rss_mb"] - full["rss_before_mb"], 1),
                r["grow"]["added"],
                inc["seconds"],
                f"{full['groups_found']}/{r['planted_groups']} ({_yes(full['found_all'])})"
                f" / {inc['groups_found']} ({_yes(inc['found_all'])})",
                full["recall"],
            ]
        )
    lines = ["## Duplicate report at scale", "", *stamp_lines(payload), ""]
    lines += [markdown_table(headers, rows, digits=2), ""]
    lines.append(
        f"{payload['config']['dim']}-d unit vectors with 1 % planted groups and no image files (no hash"
        " pairs); each stage in its own process. (all) = exactly the planted groups."
    )
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "all" if flag else "not all"


# one run, stage by stage ---------------------------------------------------------------------


def run_benchmark(
    n: int,
    index_kind: str = "flat",
    dim: int = 256,
    groups: int | None = None,
    method: str = "knn",
    workdir: str | Path | None = None,
    seed: int = 0,
    nprobe: int | None = None,
) -> dict:
    """Time and peak memory of a full and an incremental report on ``n`` synthetic vectors.

    Random unit vectors plus planted near-duplicate groups (half of them marked as known
    variants) go into a real catalog and saved index; each stage runs in a fresh process so
    that its peak RSS is its own. ``found_all`` says whether the groups equal the planted ones.
    """
    if index_kind not in INDEX_KINDS:
        raise ValueError(f"index_kind must be 'flat' or 'ivf', got {index_kind!r}")
    groups = max(1, n // 100) if groups is None else groups
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="twice-bench-") as tmp:
        result = {
            "n": n,
            "dim": dim,
            "index": index_kind,
            "method": method,
            "nprobe": nprobe,
            "planted_groups": groups,
        }
        stages = [
            ("setup", _bench_setup, (tmp, n, dim, index_kind, groups, seed)),
            ("full", _bench_report, (tmp, method, False, nprobe)),
            ("grow", _bench_grow, (tmp, max(1, n // 100), seed + 1)),
            ("incremental", _bench_report, (tmp, method, True, nprobe)),
        ]
        for name, target, args in stages:
            result[name] = _in_fresh_process(target.__name__, args)
            LOG.info("bench n=%d %s %s: %s", n, index_kind, name, result[name])
    return result


def _in_fresh_process(function: str, args: tuple) -> dict:
    """Run ``bench.report.<function>(*args)`` in a new interpreter; its peak RSS is its own."""
    code = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from bench import report\n"
        "result = getattr(report, sys.argv[2])(*json.loads(sys.argv[3]))\n"
        "sys.stdout.write(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), function, json.dumps(args)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark stage {function} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _bench_options(folder: str) -> Options:
    return Options(data_dir=Path(folder) / "data", flat_limit=10**9)


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far.

    VmHWM where Linux has it: ``ru_maxrss`` carries the parent's peak across fork and exec, and
    this bench's parent has imported torch (~900 MB), which would hide a small report's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _bench_setup(folder: str, n: int, dim: int, index_kind: str, groups: int, seed: int) -> dict:
    started = time.perf_counter()
    options = _bench_options(folder)
    xb, planted = plant_groups(n, dim, groups, seed=seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    planted = [[i + 1 for i in g] for g in planted]
    parents = {m: g[0] for k, g in enumerate(planted) if k % 2 == 0 for m in g[1:]}
    _bench_catalog(options, ids, parents)
    vectors = _bench_index(index_kind, dim, xb, ids)
    vectors.save(options.index_path)
    (Path(folder) / "planted.json").write_text(json.dumps(planted))
    return {"seconds": round(time.perf_counter() - started, 2), "variant_pairs": len(parents)}


def _bench_catalog(options, ids: np.ndarray, parents: dict[int, int], when: datetime | None = None) -> None:
    catalog = Catalog(options.catalog_url)
    when = when or utcnow()
    try:
        for start in range(0, len(ids), 50_000):
            chunk = ids[start : start + 50_000].tolist()
            rows = [
                {
                    "id": i,
                    "sha256": f"{i:064x}",
                    "stored_path": f"bench/{i}.jpg",
                    "source": f"bench/{i}.jpg",
                    "width": 320 if i in parents else 640,
                    "height": 240 if i in parents else 480,
                    "format": "JPEG",
                    "bytes": 1000,
                    "parent_id": parents.get(i),
                    "transform": "jitter" if i in parents else None,
                    "added_at": when,
                }
                for i in chunk
            ]
            # Parents first: the foreign key must find them.
            rows.sort(key=lambda r: r["parent_id"] is not None)
            with catalog.session() as session:
                session.execute(insert(ImageRow), rows)
    finally:
        catalog.close()


def _bench_index(index_kind: str, dim: int, xb: np.ndarray, ids: np.ndarray) -> VectorIndex:
    import faiss

    from twice.indexer.vectors import ivf_nlist

    if index_kind == "flat":
        vectors = VectorIndex(BENCH_MODEL, dim, flat_limit=10**9)
        vectors.add(ids, xb)
        return vectors
    nlist = ivf_nlist(len(xb))
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = xb[np.random.default_rng(0).choice(len(xb), size=min(len(xb), nlist * 64), replace=False)]
    index.train(sample)
    index.add_with_ids(xb, ids)
    return VectorIndex(BENCH_MODEL, dim, index=index, flat_limit=10**9)


def _bench_grow(folder: str, m: int, seed: int) -> dict:
    """Add ``m`` vectors: one jittered copy of each of the first 10 planted bases, rest random."""
    started = time.perf_counter()
    options = _bench_options(folder)
    planted = json.loads((Path(folder) / "planted.json").read_text())
    vectors = VectorIndex.load(options.index_path)
    base_ids = np.array([g[0] for g in planted[: min(10, m)]], dtype=np.int64)
    all_ids, all_xb = vectors.vectors()
    rng = np.random.default_rng(seed)
    new = rng.standard_normal((m, vectors.dim), dtype=np.float32)
    bases = all_xb[np.searchsorted(all_ids, base_ids)]
    new[: len(bases)] = bases + rng.standard_normal(bases.shape, dtype=np.float32) * (
        0.2 / np.sqrt(vectors.dim)
    )
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    new_ids = np.arange(int(all_ids.max()) + 1, int(all_ids.max()) + 1 + m, dtype=np.int64)
    _bench_catalog(options, new_ids, {})
    vectors.add(new_ids, new)
    vectors.save(options.index_path)
    for k, new_id in enumerate(new_ids[: len(bases)].tolist()):
        planted[k].append(new_id)
    (Path(folder) / "planted.json").write_text(json.dumps(planted))
    return {"seconds": round(time.perf_counter() - started, 2), "added": m}


def _bench_report(folder: str, method: str, incremental: bool, nprobe: int | None) -> dict:
    baseline = _peak_rss_mb()
    options = _bench_options(folder)
    started = time.perf_counter()
    report = build_report(options, method=method, incremental=incremental, record=True, nprobe=nprobe)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    catalog = Catalog(options.catalog_url)
    try:
        found = sorted(sorted(g) for g in last_run(catalog).groups)
    finally:
        catalog.close()
    planted = sorted(sorted(g) for g in json.loads((Path(folder) / "planted.json").read_text()))
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak,
        "rss_before_mb": baseline,
        "groups_found": len(found),
        "found_all": found == planted,
        "recall": f"{report['recall']['recovered']}/{report['recall']['total']}",
        "cache": report["cache"],
    }
