"""What local-feature verification makes of ``twice calibrate``'s pairs, so the rule it fits is
the one search applies on top of verification.

Search verifies its top candidates and the verdict follows: a verified fit makes a duplicate of a
score the CNN/hash rule alone would not (a crop at CNN 0.4 with 300 inliers), and a CNN or hash
duplicate with too little shared geometry is demoted (the look-alike drawings of one set). Fitted
on the CNN and the hash alone, calibration charged every look-alike to the CNN cut and raised it
(0.765 shipped -> 0.885 on the bench's catalog), though search would have demoted them, and it
missed the copies verification finds. Here each pair search would verify is verified once, as the
report verifies a pair (``PairVerifier.second_look``), and its rule evidence is rewritten:

- verified: the pair is a duplicate whatever the cuts (its CNN evidence fires at every cut);
- a CNN duplicate demoted: its CNN evidence can fire no cut;
- a hash duplicate demoted: its hash distance fires no radius.

Known variant pairs are all verified (search verifies a query's first candidates); other pairs
where a rule near the current one could fire (``in_band``). The raw scores stay as they were
for the similar rule, the weights and the plot.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from tqdm import tqdm

from twice.hashing import MAX_RADIUS

from .report_hashes import NO_HASH
from .verdicts import CLEAR_OFF, DUPLICATE, Thresholds
from .verify import verdict_signals

ALWAYS = 2.0  # a CNN score (and margin) no cut stays above: the pair fires whatever the rule
NEVER = -2.0  # a CNN score (and margin) no cut reaches


def in_band(labels, cnn, dist, margin, thresholds: Thresholds) -> np.ndarray:
    """Which pairs verification is run on: every known variant pair, and the others that a rule
    around ``thresholds`` could call duplicate (a CNN score from the lowest verified-duplicate
    floor of an unreframed fit, a hash match within the similar radius, a clear match)."""
    floor = thresholds.similar - thresholds.verify_slack
    clear = (cnn >= thresholds.clear_score) & (margin >= thresholds.clear_margin)
    return np.asarray(labels, bool) | (cnn >= floor) | (dist <= thresholds.hash_similar) | clear


def verified_evidence(pairs, left, right, verifier, thresholds: Thresholds, progress: bool = True):
    """``pairs`` (one per query and other image, ``left`` the query, ``right`` the other) with
    ``rule_cnn``, ``rule_dist`` and ``rule_margin``: the evidence the duplicate rule is fitted on
    once verification has had its say (``verifier``: a ``PairVerifier`` of the catalog; its
    verdict rule: ``thresholds``, the rule judging the catalog until now)."""
    cnn, dist = pairs.cnn.copy(), pairs.dist.copy()
    margin = pairs.margin.copy() if pairs.margin is not None else np.full(len(cnn), NEVER)
    band = np.flatnonzero(in_band(pairs.labels, pairs.cnn, pairs.dist, margin, thresholds))
    verifier.prefetch(np.unique(np.r_[left[band], right[band]]).tolist())
    structures = pairs.structure if pairs.structure is not None else [None] * len(cnn)
    for i in tqdm(band.tolist(), desc="verifying pairs", unit="pair", disable=not progress):
        checked = verifier.second_look(int(right[i]), int(left[i]))
        signals = verdict_signals(checked)
        score = float(pairs.cnn[i])
        distance = None if pairs.dist[i] >= NO_HASH else int(pairs.dist[i])
        structure = None if structures[i] is None else int(structures[i])
        effect = _effect(thresholds, score, distance, structure, signals)
        if "verified" in effect:
            cnn[i], margin[i] = ALWAYS, ALWAYS
        else:
            if "cnn" in effect:
                cnn[i], margin[i] = NEVER, NEVER
            if "hash" in effect:
                dist[i] = NO_HASH
    return replace(pairs, rule_cnn=cnn, rule_dist=dist, rule_margin=margin, verified_with=thresholds.similar)


def _effect(thresholds: Thresholds, score, distance, structure, signals: dict) -> set[str]:
    """{"verified"}, or which of the rule's parts verification would demote ("cnn", "hash")."""
    if thresholds.judge(score, None, structure=structure, **signals).verified:
        return {"verified"}
    demoted = set()
    cut = min(max(score, -1.0), 1.0)  # float32 scores stray past 1
    by_cnn = replace(thresholds, duplicate=cut, similar=min(thresholds.similar, cut))
    if by_cnn.judge(score, None, structure=structure, **signals).verdict != DUPLICATE:
        demoted.add("cnn")
    if distance is not None and distance <= MAX_RADIUS:
        # the hash alone: the CNN kept under its cut where the score allows, no clear match
        cut = thresholds.duplicate if score < thresholds.duplicate else 1.0
        by_hash = replace(
            thresholds, duplicate=cut, hash_duplicate=distance,
            hash_similar=max(distance, thresholds.hash_similar), clear_margin=CLEAR_OFF,
        )  # fmt: skip
        if by_hash.judge(score, distance, structure=structure, **signals).verdict != DUPLICATE:
            demoted.add("hash")
    return demoted


def verification_counts(pairs) -> dict | None:
    """How verification changed the pairs' rule evidence (None: it did not run)."""
    if pairs.rule_cnn is None:
        return None
    labels = np.asarray(pairs.labels, bool)
    verified = pairs.rule_cnn >= ALWAYS
    cnn_demoted = pairs.rule_cnn <= NEVER
    hash_demoted = (pairs.rule_dist >= NO_HASH) & (pairs.dist < NO_HASH)
    return {
        "verified_pairs": int(np.sum(verified & labels)),
        "verified_non_pairs": int(np.sum(verified & ~labels)),
        "cnn_demoted_pairs": int(np.sum(cnn_demoted & labels)),
        "cnn_demoted_non_pairs": int(np.sum(cnn_demoted & ~labels)),
        "hash_demoted_pairs": int(np.sum(hash_demoted & labels)),
        "hash_demoted_non_pairs": int(np.sum(hash_demoted & ~labels)),
    }
