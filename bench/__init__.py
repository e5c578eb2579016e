"""``twice bench``: reproducible quality and speed figures, side by side with peers.

``bench quality`` builds a seeded benchmark set (originals, distractors, never-indexed
negatives), indexes it with the real reindex path and queries transformed copies through the
real search path; ``bench speed`` measures the model, reindex, query latency and FAISS;
``bench report`` times the duplicate report on synthetic collections.
Results land in ``bench/results/`` as JSON plus a markdown table.
"""

import lazy_loader

# Names load on first use: a report stage's fresh process imports bench.report alone, so its
# baseline memory is not torch's.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "machine": ["MemoryProbe", "machine_facts"],
        "metrics": ["MethodScores", "QueryOutcome", "summarise"],
        "quality": ["QualityConfig", "run_quality"],
        "report": ["ReportConfig", "run_report_bench"],
        "results": ["RESULTS_DIR", "markdown_table", "write_results"],
        "sources": ["BenchSet", "build_bench_set"],
        "speed": ["SpeedConfig", "run_speed"],
    },
)
