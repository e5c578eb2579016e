"""``twice bench quality``: recall@k per transform, duplicate precision/recall, score plots."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from twice.augment.sources import HELD_OUT_DRAW
from twice.model import Embedder
from twice.search.verdicts import CLEAR_OFF, rule_text

from .calibration import calibrate_on_distractors
from .machine import machine_facts
from .methods import EmbeddingMethod, PHashMethod, random_embedder
from .metrics import MethodScores, outcome_of, summarise
from .results import markdown_table, stamp_lines
from .sources import DEFAULT_TRANSFORMS, BenchSet, build_bench_set

LOG = logging.getLogger(__name__)

K = 5  # recall@1 and recall@5 need the top 5


@dataclass
class QualityConfig:
    """Sizes and competitors of one quality run; ``quick()`` is the CI smoke-test size."""

    originals: int = 100
    distractors: int = 200
    negatives: int = 100
    seed: int = HELD_OUT_DRAW.seed
    sources: tuple[str, ...] = HELD_OUT_DRAW.sources
    transforms: tuple[str, ...] = DEFAULT_TRANSFORMS
    checkpoints: tuple[str, ...] = ()  # extra models; the current model and random init always run
    search_variants: tuple[dict, ...] = ()  # search_file kwargs to try with the current model
    random_init: bool = True
    phash: bool = True
    calibrate: bool = True  # fit thresholds on variants of the distractors, as `twice calibrate` does
    calibration_images: int | None = None  # distractors given variants for it (None: all)
    install: bool = True  # apt-get the Debian sources when missing
    work_dir: Path | None = None  # None: a temporary folder, removed afterwards
    progress: bool = True
    quick: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_config(cls, **overrides) -> QualityConfig:
        base = cls(
            originals=8,
            distractors=8,
            negatives=8,
            sources=("synthetic", "skimage"),
            install=False,
            quick=True,
        )
        return base.__class__(**{**asdict(base), **overrides})


def make_methods(config: QualityConfig, options, bench_set: BenchSet | None = None) -> list:
    """The competitors, in table order; a competitor that cannot run is a note, not an error.

    The current model runs twice on one index: the whole search (hash + CNN evidence) and the
    CNN alone; other models run CNN-only, so model columns compare models and nothing else.
    With ``config.calibrate`` the current model's thresholds are fitted on variants of the
    distractors first (other models keep their default thresholds).
    """
    current = Embedder.from_options(options)
    calibrator = None
    if config.calibrate and bench_set is not None and bench_set.distractors:
        images = bench_set.distractors[: config.calibration_images]

        def calibrator(folder: Path):
            return calibrate_on_distractors(
                images,
                bench_set.transforms,
                options,
                current,
                folder,
                seed=config.seed,
                progress=config.progress,
            )

    elif config.calibrate:
        config.notes.append("thresholds not calibrated: the set has no distractors to calibrate on")
    search = EmbeddingMethod("twice search", options, current, calibrator=calibrator)
    methods: list = [
        search,
        EmbeddingMethod(f"CNN ({current.weights.source})", options, current, "cnn", base=search),
    ]
    for kwargs in config.search_variants:
        label = ",".join(f"{k}={v}" for k, v in kwargs.items())
        methods.append(
            EmbeddingMethod(f"twice search {label}", options, current, "search", kwargs, base=search)
        )
    for path in config.checkpoints:
        embedder = Embedder.from_options(options.with_overrides(checkpoint=str(path)))
        methods.append(EmbeddingMethod(f"CNN {Path(path).name}", options, embedder, "cnn"))
    if config.random_init:
        if current.weights.source == "random":
            config.notes.append("random-init VGG-16 not run separately: the current model IS the random init")
        else:
            methods.append(EmbeddingMethod("CNN random-init", options, random_embedder(options), "cnn"))
    if config.phash:
        try:
            methods += [PHashMethod(dihedral=False), PHashMethod(dihedral=True)]
        except ImportError as exc:
            config.notes.append(f"PHash skipped: imagededup not installed ({exc}); pip install -e '.[bench]'")
    return methods


def evaluate(method, bench_set: BenchSet, workdir: Path, progress: bool) -> MethodScores:
    scores = MethodScores(method.name, method.describe())
    shutil.rmtree(workdir, ignore_errors=True)  # a kept --work-dir must not carry an old catalog
    started = time.perf_counter()
    method.index(bench_set.indexed, workdir, progress)
    calibrating = getattr(method, "calibration_seconds", 0.0)
    scores.index_seconds = time.perf_counter() - started - calibrating
    scores.calibration_seconds = calibrating
    scores.threshold = method.threshold
    scores.rule = getattr(method, "rule", None)
    started = time.perf_counter()
    answers = method.query_many([q.path for q in bench_set.queries], K, progress=progress)
    scores.query_seconds = time.perf_counter() - started
    scores.outcomes = [
        outcome_of(q.transform, q.original, hits) for q, hits in zip(bench_set.queries, answers, strict=True)
    ]
    LOG.info(
        "%s: index %.1fs, %d queries %.1fs",
        method.name,
        scores.index_seconds,
        len(answers),
        scores.query_seconds,
    )
    return scores


def run_quality(
    config: QualityConfig, options, command: str, plot_path: Path | None = None
) -> tuple[dict, str]:
    """Build the set, run every method, return (JSON payload, markdown)."""
    work = Path(config.work_dir) if config.work_dir else Path(tempfile.mkdtemp(prefix="twice-bench-"))
    try:
        bench_set = build_bench_set(
            work / "set",
            config.originals,
            config.distractors,
            config.negatives,
            config.seed,
            config.sources,
            config.transforms,
            config.install,
        )
        methods = make_methods(config, options, bench_set)
        try:
            results = [
                evaluate(m, bench_set, work / f"method-{i}", config.progress) for i, m in enumerate(methods)
            ]
            calibration = methods[0].calibration if isinstance(methods[0], EmbeddingMethod) else None
        finally:
            for method in methods:
                method.close()
    finally:
        if config.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    payload = quality_payload(config, bench_set, results, command, methods[0].embedder.version)
    payload["calibration"] = calibration.summary() if calibration is not None else None
    if plot_path is not None:
        payload["plot"] = plot_scores(results, plot_path)
    return payload, quality_markdown(payload)


def quality_payload(
    config: QualityConfig, bench_set: BenchSet, results: list[MethodScores], command: str, model: str
) -> dict:
    return {
        "kind": "quality",
        "command": command,
        "machine": machine_facts(),
        "model": model,
        "config": {k: v for k, v in asdict(config).items() if k not in ("notes", "progress")},
        "set": {
            "counts": bench_set.counts(),
            "sources": bench_set.sources,
            "transforms": bench_set.transforms,
            "left_out": bench_set.left_out,
        },
        "notes": config.notes,
        "methods": [
            {
                "name": r.name,
                "description": r.description,
                "threshold": r.threshold,
                "rule": r.rule,
                "index_seconds": round(r.index_seconds, 2),
                "calibration_seconds": round(r.calibration_seconds, 2),
                "query_ms": round(1000 * r.query_seconds / max(1, len(r.outcomes)), 2),
                **summarise(r.outcomes),
                "per_source": per_source(bench_set, r),
                "scores": {
                    "positive": [o.top_score for o in r.outcomes if o.positive],
                    "positive_right": [o.rank == 1 for o in r.outcomes if o.positive],
                    "negative": [o.top_score for o in r.outcomes if not o.positive],
                },
            }
            for r in results
        ],
    }


def per_source(bench_set: BenchSet, scores: MethodScores) -> dict:
    """recall@1 of the transformed copies, by the source of their original."""
    found: dict[str, list[bool]] = {}
    for query, outcome in zip(bench_set.queries, scores.outcomes, strict=True):
        if query.original is not None:
            found.setdefault(bench_set.source_of[query.original.name], []).append(outcome.rank == 1)
    return {source: {"n": len(hits), "recall@1": sum(hits) / len(hits)} for source, hits in found.items()}


def quality_markdown(payload: dict) -> str:
    methods = payload["methods"]
    counts = payload["set"]["counts"]
    lines = ["## Quality: finding transformed copies", "", *stamp_lines(payload), ""]
    lines.append(
        f"Indexed {counts['originals']['total']} originals + {counts['distractors']['total']} distractors;"
        f" queried {counts['queries'] - counts['negatives']['total']} transformed copies and"
        f" {counts['negatives']['total']} never-indexed negatives. Sources: "
        + "; ".join(f"{name}: {note}" for name, note in payload["set"]["sources"].items())
        + "."
        + _left_out_text(payload["set"].get("left_out") or {})
    )
    lines += ["", "Recall@1 / recall@5 per transform:", ""]
    headers = ["transform", *[m["name"] for m in methods]]
    rows = [
        [t, *[_pair(m["per_transform"].get(t, {})) for m in methods]] for t in payload["set"]["transforms"]
    ]
    rows.append(["**all**", *[_pair(m) for m in methods]])
    lines += [markdown_table(headers, rows), ""]
    lines += ["", "Recall@1 by the source of the original (copies queried):", ""]
    sources = sorted({s for m in methods for s in m["per_source"]})
    rows = [
        [
            f"{s} ({methods[0]['per_source'].get(s, {}).get('n', 0)})",
            *[m["per_source"].get(s, {}).get("recall@1") for m in methods],
        ]
        for s in sources
    ]
    lines += [markdown_table(["source", *[m["name"] for m in methods]], rows, 2), ""]
    lines += ["Duplicate verdict (top answer called a duplicate):", ""]
    calibration = payload.get("calibration")
    if calibration:
        d, c = calibration["duplicate"], calibration["cnn_alone"]
        lines += [
            f"Thresholds of the current model fitted as `twice calibrate` fits them, on"
            f" {calibration['positives']} known variant pairs and {calibration['negatives']} non-pairs"
            f" made from {calibration['images']} distractors (never from the queried originals):"
            f" duplicate = {_rule(d)} (on those pairs P {d['precision']:.3f}, R {d['recall']:.3f}"
            f"{'' if d['target_met'] else ', target NOT met'}); the CNN row uses the CNN-alone fit,"
            f" {_rule(c)} (P {c['precision']:.3f}, R {c['recall']:.3f}). Other models keep their"
            " default thresholds.",
            "",
        ]
    headers = [
        "method",
        "threshold",
        "precision",
        "recall",
        "negatives called duplicate",
        "index s",
        "ms/query",
    ]
    rows = [
        [
            m["name"],
            m.get("rule") or m["threshold"],
            m["duplicate"]["precision"],
            m["duplicate"]["recall"],
            f"{m['duplicate']['negatives_called_duplicate']} of {m['negatives']}",
            m["index_seconds"],
            m["query_ms"],
        ]
        for m in methods
    ]
    lines += [markdown_table(headers, rows), ""]
    lines += [
        f"- {m['name']}: wrong duplicate calls by the signals that made them: "
        + ", ".join(f"{signals} {n}" for signals, n in by_signal.items())
        for m in methods
        if (by_signal := m["duplicate"].get("false_positives_by_signal"))
    ]
    lines += [f"- {m['name']}: {m['description']}" for m in methods]
    lines += [f"- note: {note}" for note in payload["notes"]]
    if payload.get("plot"):
        lines += ["", f"![top-1 score distributions]({Path(payload['plot']).name})"]
    return "\n".join(lines)


LEFT_OUT_WORDS = {
    "repeat": "repeats of a drawn image",
    "series": "further members of a numbered series",
    "near-copy": "near-copies of a drawn image under a turn or flip",
    "blank": "blank images",
    "blank copy": "originals that a transform turns blank (pale clip art under bright +100)",
}


def _left_out_text(left_out: dict[str, int]) -> str:
    """Why drawn images were kept out of the set (``bench.sources.PoolFilter``)."""
    if not left_out:
        return ""
    parts = [f"{n} {LEFT_OUT_WORDS.get(reason, reason)}" for reason, n in sorted(left_out.items())]
    return (
        " Left out of the draw, since the set must hold no two images that are one picture and"
        " no copy without a picture: " + ", ".join(parts) + "."
    )


def _rule(point: dict) -> str:
    clear = point.get("clear_score", 1.0), point.get("clear_margin", CLEAR_OFF)
    return rule_text(point["hash_max"], point["cnn_min"], *clear)


def _pair(figures: dict) -> str:
    r1, r5 = figures.get("recall@1"), figures.get("recall@5")
    return "–" if r1 is None else f"{r1:.2f} / {r5:.2f}"


def plot_scores(results: list[MethodScores], path: Path) -> str | None:
    """Histograms of top-1 scores: copies matched right, copies matched wrong, negatives."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        LOG.warning("matplotlib not installed: no score plot (pip install -e '.[bench]')")
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        groups = {
            "copy, right top-1": [o.top_score for o in r.outcomes if o.positive and o.rank == 1],
            "copy, wrong top-1": [o.top_score for o in r.outcomes if o.positive and o.rank != 1],
            "negative": [o.top_score for o in r.outcomes if not o.positive],
        }
        groups = {label: [v for v in values if v is not None] for label, values in groups.items()}
        every = [v for values in groups.values() for v in values]
        bins = np.linspace(min(every), max(every) + 1e-6, 40) if every else 30  # shared, so bars compare
        for label, values in groups.items():
            if values:
                ax.hist(values, bins=bins, alpha=0.55, label=f"{label} ({len(values)})")
        if r.threshold is not None:
            ax.axvline(r.threshold, color="k", linestyle="--", linewidth=1)
        ax.set_title(r.name, fontsize=9)
        ax.set_xlabel("top-1 score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
