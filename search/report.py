"""Duplicate-group reports over the whole collection: pairs -> verdicts -> groups -> output.

``build_report`` reads the saved index (its model version, no network needed) and judges pairs
the way search judges a query's results, with the thresholds of the model version: candidate
pairs (a CNN score at or above the duplicate threshold, a perceptual-hash distance at or below
the duplicate hash threshold, or near neighbours that local-feature verification could make
duplicates) get ``Thresholds.judge`` with the pair's hash structure and, in the uncertain band,
the verification's inliers (``search.report_scan``); images left in no duplicate pair are
searched by their 8 views (then their part views) as search searches a query
(``search.report_loners``). It groups the duplicate pairs so that a group does not grow by
chaining (``search.report_linkage``, each member judged as search judges it as a query), picks each
group's original by ``ORIGINAL_RULE``, gives every other member its evidence against the
original (as search's ``evidence`` field, with the edit in words where verification ran), sets
known augmented variants aside (counted, and listed only on request), checks how many known
variant pairs were recovered, and says what changed since the last recorded report.

CNN pairs are cached per model version (table ``report_pair_cache``), hash views and pairs in
``report_hash_cache``: a later report only searches (and decodes) the images added or changed
since, and drops pairs of removed ones. ``report_runs`` remembers each report's groups.

The parts, each in its own module: ``report_scan`` (pairs and verdicts), ``report_verify``
(verification within a run), ``report_linkage`` (groups), ``pair_cache`` and
``report_hashes`` (what a later report reuses), ``report_groups`` (originals, members, variants,
recall), ``report_changes`` (what changed), ``report_render`` and ``report_html`` (output).
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from twice.indexer import Catalog
from twice.indexer.schema import utcnow

from .report_changes import classify_groups, describe_changes, last_run, record_run
from .report_groups import describe_group, get_rows, variant_parents, variant_recall
from .report_linkage import DEFAULT_LINKAGE, ORIGINAL_RULE
from .report_render import check_page, paginate
from .report_scan import DuplicateScan, scan_duplicates, threshold_warnings

LOG = logging.getLogger(__name__)


def open_catalog(options) -> Catalog:
    return Catalog(options.catalog_url)


def build_report(
    options,
    model_version: str | None = None,
    threshold: float | None = None,
    include_variants: bool = False,
    page: int | None = None,
    per_page: int | None = None,
    method: str = "knn",
    incremental: bool = True,
    record: bool = False,
    progress: bool = False,
    nprobe: int | None = None,
    workers: int = 0,
    linkage: str = DEFAULT_LINKAGE,
    shipped: dict | None = None,
    embedder=None,
) -> dict:
    """The duplicate report as a JSON-ready dict (see the module docstring).

    ``model_version``: refuse an index of another model (None: whatever the index holds).
    ``page``/``per_page``: return one page of listed groups (1-based; both or neither).
    ``record``: remember this report's groups, so the next one says what changed.
    ``nprobe``: inverted lists visited per query when the index is IVF (default: the index's).
    ``workers``: processes decoding images whose hash views are not cached (0: this one).
    ``linkage``: how duplicate pairs make groups (``search.report_linkage``).
    ``shipped``: the thresholds the index's model ships with (``Embedder.shipped_thresholds``),
    used as search uses them: when ``twice calibrate`` stored none for the model version.
    ``embedder``: builds the model when called, so that a pair showing a turn or flip scores as
    search scores it, over the turned views (``search.report_views``; None: stored vectors only).
    """
    started = time.perf_counter()
    page, per_page = check_page(page, per_page)
    catalog = open_catalog(options)
    try:
        scan = scan_duplicates(
            options,
            catalog,
            model_version,
            threshold,
            method,
            incremental,
            progress,
            nprobe,
            workers,
            linkage,
            shipped,
            embedder,
        )
        report = assemble(scan, catalog, options, include_variants)
        if record:
            record_run(catalog, scan, report)
    finally:
        catalog.close()
    report["took_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return paginate(report, page, per_page)


def assemble(scan: DuplicateScan, catalog: Catalog, options, include_variants: bool) -> dict:
    parents = variant_parents(catalog)
    rows = get_rows(catalog, sorted({i for g in scan.groups for i in g}))
    previous = last_run(catalog)
    labels, gone = classify_groups(previous.groups if previous else [], scan.groups)
    listed, summarised = [], Counter()
    for group, label in zip(scan.groups, labels, strict=True):
        entry = describe_group(group, rows, parents, scan, options, include_variants)
        entry["change"] = label if previous is not None else None
        summarised["variants"] += entry["known_variants"]
        if entry["findings"] == 0 and not include_variants:
            summarised["groups"] += 1
            summarised["images"] += entry["size"]
            continue
        listed.append(entry)
    listed.sort(key=lambda g: (-g["size"], -(g["max_score"] or 0.0), g["members"][0]["id"]))
    for number, entry in enumerate(listed, 1):
        entry["group"] = number
    in_groups = sum(len(g) for g in scan.groups)
    return {
        "generated_at": utcnow().isoformat(),
        "model": scan.model_version,
        "index": {
            "type": scan.index_type,
            "approximate": scan.index_type.startswith("IVF"),
            "nprobe": scan.nprobe if scan.index_type.startswith("IVF") else None,
        },
        "threshold": scan.threshold,
        "hash_threshold": scan.hash_threshold,
        "thresholds": scan.thresholds.to_dict(),
        "original_rule": ORIGINAL_RULE,
        "linkage": scan.linkage,
        "include_variants": include_variants,
        "summary": {
            "images": len(scan.ids),
            "pending": scan.pending,
            "pairs": len(scan.pairs),
            "pairs_by": scan.pairs.counts(),
            "candidate_pairs": len(scan.candidates),
            "verified_pairs": scan.verifier.runs if scan.verifier is not None else 0,
            "turned_images": scan.views.embedded if scan.views is not None else 0,
            "searched_images": len(scan.views.searched) if scan.views is not None else 0,
            "hashed_images": len(scan.hashes.ids),
            "groups": len(scan.groups),
            "groups_listed": len(listed),
            "images_in_groups": in_groups,
            "duplicate_images": in_groups - len(scan.groups),
            "variant_only_groups": summarised["groups"],
            "variant_only_images": summarised["images"],
            "known_variants_in_groups": summarised["variants"],
        },
        "recall": variant_recall(scan, parents),
        "warnings": threshold_warnings(scan),
        "changes": describe_changes(catalog, previous, scan, labels, gone),
        "cache": scan.cache,
        "groups": listed,
    }
