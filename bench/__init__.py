"""``twice bench``: reproducible quality and speed figures, side by side with peers.

``bench quality`` builds a seeded benchmark set (originals, distractors, never-indexed
negatives), indexes it with the real reindex path and queries transformed copies through the
real search path; ``bench speed`` measures the model, reindex, query latency and FAISS.
Results land in ``bench/results/`` as JSON plus a markdown table.
"""

from .machine import MemoryProbe, machine_facts
from .metrics import MethodScores, QueryOutcome, summarise
from .quality import QualityConfig, run_quality
from .results import RESULTS_DIR, markdown_table, write_results
from .sources import BenchSet, build_bench_set
from .speed import SpeedConfig, run_speed

__all__ = [
    "RESULTS_DIR",
    "BenchSet",
    "MemoryProbe",
    "MethodScores",
    "QualityConfig",
    "QueryOutcome",
    "SpeedConfig",
    "build_bench_set",
    "machine_facts",
    "markdown_table",
    "run_quality",
    "run_speed",
    "summarise",
    "write_results",
]
