"""A report's groups in words: each group's original, its members with their evidence against
it, known augmented variants, and how many known variant pairs the scan recovered."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from sqlalchemy import select

from twice.hashing import HASH_BITS
from twice.indexer import Catalog, ImageRow

from .pairs import chains_from
from .report_linkage import Enlarged, Kept, choose_original, leads_with_original, partners_within
from .report_scan import DuplicateScan
from .verdicts import RANK

LOG = logging.getLogger(__name__)

MAX_MISSED_LISTED = 50
CHUNK = 500  # ids per SQL IN (...) clause, under SQLite's variable limit


# originals and variants ----------------------------------------------------------------------


def pick_original(
    rows: list[ImageRow],
    partners: dict[int, int] | None = None,
    framed: dict[int, int] | None = None,
    enlarged: Enlarged | None = None,
    kept: Kept | None = None,
) -> ImageRow:
    """The original of a group by ``ORIGINAL_RULE``; ``partners``: each id's duplicates in the
    group, ``framed``: those of them that keep its frame (none known: resolution decides),
    ``enlarged``: whether a larger image is a smaller one enlarged, ``kept``: how many of the group
    are duplicates of an image (``choose_original``)."""
    if not rows:
        raise ValueError("pick_original needs at least one row")
    return choose_original(rows, partners or {}, framed or {}, enlarged, kept)


def variant_parents(catalog: Catalog) -> dict[int, tuple[int, str | None]]:
    """Every known variant: id -> (parent_id, transform)."""
    with catalog.session() as session:
        rows = session.execute(
            select(ImageRow.id, ImageRow.parent_id, ImageRow.transform).where(ImageRow.parent_id.is_not(None))
        ).all()
    return {int(i): (int(p), t) for i, p, t in rows}


def family_root(image_id: int, parents: dict[int, tuple[int, str | None]]) -> int:
    """The first ancestor without a parent (a cycle stops the walk)."""
    seen = {image_id}
    while image_id in parents:
        image_id = parents[image_id][0]
        if image_id in seen:
            break
        seen.add(image_id)
    return image_id


def known_variants(group: list[int], parents: dict[int, tuple[int, str | None]]) -> set[int]:
    """Members that are variants of another member's family: expected duplicates."""
    roots = {i: family_root(i, parents) for i in group}
    families = Counter(roots.values())
    return {i for i in group if i in parents and families[roots[i]] > 1}


def get_rows(catalog: Catalog, ids: list[int]) -> dict[int, ImageRow]:
    rows: dict[int, ImageRow] = {}
    for start in range(0, len(ids), CHUNK):
        rows.update(catalog.get_many(ids[start : start + CHUNK]))
    return rows


def variant_recall(scan: DuplicateScan, parents: dict[int, tuple[int, str | None]]) -> dict:
    """Known variant pairs (variant, parent) with both vectors: how many were found as pairs."""
    pairs = scan.pairs
    signals = {
        key: (bool(c), bool(h))
        for key, c, h in zip(pairs.keys_list(), pairs.by_cnn.tolist(), pairs.by_hash.tolist(), strict=True)
    }
    present = set(scan.ids.tolist())
    by_transform: dict[str, list[int]] = {}
    by_signal = Counter()
    missed, recovered, total = [], 0, 0
    for child, (parent, transform) in sorted(parents.items()):
        if child not in present or parent not in present:
            continue
        total += 1
        fired = signals.get((min(child, parent), max(child, parent)))
        hit = fired is not None
        recovered += hit
        by_signal.update(name for name, on in zip(("cnn", "hash"), fired or (), strict=False) if on)
        counts = by_transform.setdefault(transform or "unknown", [0, 0])
        counts[0] += hit
        counts[1] += 1
        if not hit:
            missed.append(missed_pair(scan, child, parent, transform))
    missed.sort(key=lambda m: m["score"])
    return {
        "recovered": recovered,
        "total": total,
        "by_signal": {"cnn": by_signal["cnn"], "hash": by_signal["hash"]},
        "by_transform": {t: {"recovered": r, "total": n} for t, (r, n) in sorted(by_transform.items())},
        "missed": missed[:MAX_MISSED_LISTED],
        "missed_total": len(missed),
    }


def missed_pair(scan: DuplicateScan, child: int, parent: int, transform: str | None) -> dict:
    """A known variant pair that no signal found, with how near each signal came."""
    score, _, hashed, _ = scan.judge(parent, child)
    distance = None if hashed is None else hashed["distance"]
    return {
        "id": child,
        "parent_id": parent,
        "transform": transform,
        "score": round(score, 6),
        "hash_distance": distance,
    }


# members and groups ------------------------------------------------------------------------


def member_dict(
    row: ImageRow, role: str, score: float, scan: DuplicateScan, options, evidence=None, via=()
) -> dict:
    """One image of a group; ``via``: the images that chain it to the original when the two are
    not a duplicate pair themselves (single linkage joins A-B-C though A-C may be different)."""
    score = float(np.clip(score, -1.0, 1.0))
    verdict = scan.thresholds.verdict(score) if evidence is None else evidence.pop("verdict")
    return {
        "id": row.id,
        "role": role,
        "score": round(score, 6),
        "verdict": verdict,
        "evidence": evidence,
        "via": list(via),
        "source": row.source,
        "page_url": row.page_url,
        "path": str(Path(options.images_dir) / row.stored_path),
        "width": row.width,
        "height": row.height,
        "format": row.format,
        "bytes": row.bytes,
        "added_at": row.added_at.isoformat() if row.added_at else None,
        "parent_id": row.parent_id,
        "transform": row.transform,
    }


def member_evidence(scan: DuplicateScan, original: int, member: int) -> tuple[float, dict]:
    """A member's CNN score to the original and its evidence, shaped as search's ``evidence``.

    ``transform`` is the dihedral map from the original to the member when the hash decided;
    ``hash.stored_of`` says whose stored photometric view ``hash.stored`` is ("original" or
    "member"; in search it is always the result's); ``verification`` is the member's fit onto the
    original where verification ran (the edit in words), as in search.
    """
    score, judgement, hashed, verification = scan.judge(original, member)
    if hashed is not None:
        hashed["verdict"] = judgement.hash
    decided_by_hash = hashed is not None and "hash" in judgement.decided_by
    transform = hashed["transform"] if decided_by_hash else None
    return score, {
        "verdict": judgement.verdict,
        "signals": judgement.signals,
        "decided_by": judgement.decided_by,
        "exact": False,  # one row per sha256: two catalog images never share bytes
        "hash": hashed,
        "cnn": {"score": round(score, 6), "verdict": judgement.cnn},
        "transform": None if transform == "identity" else transform,
        "verification": verification,
    }


def member_rank(member: dict) -> tuple:
    """Search's order: verdict, signals that fired, hash-decided first, CNN score, hash distance."""
    evidence = member["evidence"]
    fired_hash = evidence["hash"]["distance"] if "hash" in evidence["signals"] else HASH_BITS + 1
    return (
        RANK[member["verdict"]],
        -len(evidence["signals"]),
        "hash" not in evidence["decided_by"],
        -member["score"],
        fired_hash,
        member["id"],
    )


def describe_group(group, rows, parents, scan, options, include_variants: bool) -> dict:
    """One group: the original first, then the others in search's order against it."""
    if leads_with_original(scan.linkage):
        original = rows[group[0]]  # the one its members were judged against
    else:
        partners = partners_within(group, scan.graph)
        framed = partners_within(group, scan.graph, scan.keeps_frame)
        original = pick_original(
            [rows[i] for i in group], partners, framed, scan.enlarged, scan.duplicates_of(group)
        )
    expected = known_variants(group, parents) - {original.id}
    chains = chains_from(original.id, scan.graph)
    others = []
    for i in group:
        if i == original.id or (i in expected and not include_variants):
            continue
        role = "variant" if i in expected else "duplicate"
        score, evidence = member_evidence(scan, original.id, i)
        # A member that is no duplicate of the original itself (single linkage) says which
        # images chain it there.
        via = chains.get(i, []) if evidence["verdict"] != "duplicate" else []
        others.append(member_dict(rows[i], role, score, scan, options, evidence, via))
    others.sort(key=member_rank)
    findings = len(group) - 1 - len(expected)
    distances = [m["evidence"]["hash"]["distance"] for m in others if m["evidence"]["hash"] is not None]
    return {
        "size": len(group),
        "findings": findings,
        "hidden_variants": 0 if include_variants else len(expected),
        "known_variants": len(expected),
        "max_score": max((m["score"] for m in others), default=None),
        "min_score": min((m["score"] for m in others), default=None),
        "min_hash_distance": min(distances, default=None),
        "members": [member_dict(original, "original", 1.0, scan, options), *others],
    }
