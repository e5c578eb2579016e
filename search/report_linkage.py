"""How duplicate pairs become a report's groups.

Single linkage (every connected component of the duplicate pairs is a group) lets a group grow
by chaining: A-B and B-C are duplicates, so A, B and C are one group though A and C are
different. On a folder of clip art, 116 unrelated drawings chained one to the next that way.

- ``single``: connected components (what reports did before).
- ``original``: complete linkage against the group's original: each component's original
  (``ORIGINAL_RULE``) keeps the members that are duplicates of it, judged pair by pair as
  search would judge them; the rest form components of their own and are grouped again.
- ``split``: split at the weakest link: while some member of a component is not a duplicate of
  its original, the pair with the least evidence is dropped and the parts grouped again.

Measured on a planted collection (tests/test_report_groups.py; docs/how-it-works.md): see
``DEFAULT_LINKAGE``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .pairs import group_pairs, pair_graph

LOG = logging.getLogger(__name__)

LINKAGES = ("original", "split", "single")
# Complete linkage against the original: on the planted collection it keeps every family whole
# and no drawing with another, as splitting at the weakest link does, with fewer pairs judged.
DEFAULT_LINKAGE = "original"
ORIGINAL_RULE = (
    "most duplicates in the group that keep its frame (verified as the whole picture, not cropped,"
    " bordered, tilted or stretched); among those tied on that, not a smaller one's enlargement,"
    " then (where that count is not 0) most images of the group that are duplicates of it (each"
    " judged against it as search would judge it), then most duplicates in the group, then largest"
    " resolution (width x height), then earliest added_at, then smallest id"
)

IsDuplicate = Callable[[int, int], bool]  # (original, member) -> whether a duplicate pair
OriginalOf = Callable[[list[int]], int]  # a component -> its original
KeepsFrame = Callable[[int, int], bool]  # whether a duplicate pair's fitted edit keeps the frame
Enlarged = Callable[[int, int], bool]  # (larger, smaller) -> whether the larger is the smaller enlarged
Kept = Callable[[int], int]  # an image -> how many of its group are duplicates of it


def original_key(row, partners: int = 0, framed: int = 0) -> tuple:
    """Sort key of ``ORIGINAL_RULE`` for a catalog row with ``partners`` duplicates in its group,
    ``framed`` of them keeping its frame: the smallest key is the original.

    Edits of colour, compression, size, a quarter turn or a mirror, or drawn over the picture
    keep the frame, so the original shares its frame with every such copy; a copy that an edit
    reframed (a crop, borders or a caption bar, a tilt, a stretch) shares its frame with none of
    them, and is often the larger: resolution alone, or the count of duplicates (a full clique of
    copies ties them all), picked such a copy for 13 of 20 families (bench report-quality)."""
    added = row.added_at.timestamp() if row.added_at is not None else float("inf")
    return (-framed, -partners, -(row.width * row.height), added, row.id)


def choose_original(
    rows: list,
    partners: dict[int, int],
    framed: dict[int, int],
    enlarged: Enlarged | None = None,
    kept: Kept | None = None,
):
    """The row of ``rows`` that ``ORIGINAL_RULE`` makes the original (``original_key``).

    Among the rows tied on the most duplicates that keep the frame, ``enlarged`` passes over one
    that is an enlargement of a smaller one (an upscaled copy keeps the frame and every pair its
    original has, and is larger), and ``kept`` prefers the one most of the group are duplicates
    of: ``partners`` counts only the candidate pairs the scan judged (by CNN, hash and nearest
    neighbours), so a copy can count more of them than its original, yet a copy that lost detail
    (brightened towards white) is a duplicate of the original and not of a JPEG re-encode of it,
    and complete linkage would leave it out of a group the re-encode heads."""
    ordered = sorted(rows, key=lambda row: original_key(row, partners.get(row.id, 0), framed.get(row.id, 0)))
    top = framed.get(ordered[0].id, 0)
    tied = [row for row in ordered if framed.get(row.id, 0) == top]
    if enlarged is not None:
        tied = not_enlargements(tied, enlarged)
    if kept is None or top == 0 or len(tied) == 1:
        # top 0: no pair verified as the whole picture, nothing tells which image the others copy
        return tied[0]
    counts = {row.id: kept(row.id) for row in tied}
    return min(tied, key=lambda row: -counts[row.id])  # min keeps the first of equals: the rule's


def not_enlargements(rows: list, enlarged: Enlarged) -> list:
    """``rows`` less each one ``enlarged`` says is an enlargement of a smaller one of them (all of
    them where every one is)."""
    area = {row.id: row.width * row.height for row in rows}
    kept = [
        row
        for row in rows
        if not any(area[other.id] < area[row.id] and enlarged(row.id, other.id) for other in rows)
    ]
    return kept or rows


def partners_within(
    group, graph: dict[int, list[int]], keeps_frame: KeepsFrame | None = None
) -> dict[int, int]:
    """How many duplicate partners each image of ``group`` has inside it; with ``keeps_frame``,
    only those whose pair keeps the frame."""
    members = set(group)
    return {
        i: sum(j in members and (keeps_frame is None or keeps_frame(i, j)) for j in graph.get(i, ()))
        for i in group
    }


def check_linkage(linkage: str) -> str:
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, got {linkage!r}")
    return linkage


def link_groups(
    a,
    b,
    weights,
    linkage: str,
    is_duplicate: IsDuplicate,
    original_of: OriginalOf,
) -> list[list[int]]:
    """Groups of the duplicate pairs (a[i], b[i]) by ``linkage``, largest first: each the
    original its members were judged against, then the others by id (``single``: sorted ids,
    no original judged).

    ``weights[i]``: the evidence of pair i (``split`` drops the weakest first).
    """
    components = group_pairs(a, b)
    if check_linkage(linkage) == "single":
        return components
    if linkage == "original":
        groups = around_originals(components, pair_graph(a, b), is_duplicate, original_of)
    else:
        weight = {(x, y): w for x, y, w in zip(list(a), list(b), list(weights), strict=True)}
        groups = split_weakest(components, weight, is_duplicate, original_of)
    return sorted(([g[0], *sorted(g[1:])] for g in groups), key=lambda g: (-len(g), min(g)))


def leads_with_original(linkage: str) -> bool:
    """Whether ``link_groups`` puts each group's original first (every linkage but single)."""
    return check_linkage(linkage) != "single"


def around_originals(
    components: list[list[int]],
    graph: dict[int, list[int]],
    is_duplicate: IsDuplicate,
    original_of: OriginalOf,
) -> list[list[int]]:
    """Each component's original with its duplicates; the others are grouped again."""
    groups, todo = [], list(components)
    while todo:
        component = todo.pop()
        original = original_of(component)
        members = [i for i in component if i != original and is_duplicate(original, i)]
        if members:
            groups.append([original, *members])
        todo += components_within(set(component) - {original, *members}, graph)
    return groups


def split_weakest(
    components: list[list[int]],
    weight: dict[tuple[int, int], float],
    is_duplicate: IsDuplicate,
    original_of: OriginalOf,
) -> list[list[int]]:
    """Drop a component's weakest pair until every member is a duplicate of its original."""
    groups, todo = [], list(components)
    while todo:
        component = todo.pop()
        original = original_of(component)
        others = [i for i in component if i != original]
        if all(is_duplicate(original, i) for i in others):
            groups.append([original, *others])
            continue
        members = set(component)
        edges = sorted(
            ((w, x, y) for (x, y), w in weight.items() if x in members and y in members), reverse=True
        )
        while edges:
            _, x, y = edges.pop()  # the weakest
            del weight[(x, y)]
            parts = group_pairs([e[1] for e in edges], [e[2] for e in edges])
            if len(parts) != 1 or len(parts[0]) != len(component):
                todo += parts
                break
    return groups


def components_within(ids: set[int], graph: dict[int, list[int]]) -> list[list[int]]:
    """Connected components of ``graph`` restricted to ``ids``, of two or more images."""
    seen, out = set(), []
    for start in sorted(ids):
        if start in seen:
            continue
        seen.add(start)
        component, frontier = [start], [start]
        while frontier:
            frontier = [y for x in frontier for y in graph.get(x, ()) if y in ids and y not in seen]
            frontier = list(dict.fromkeys(frontier))
            seen.update(frontier)
            component += frontier
        if len(component) > 1:
            out.append(component)
    return out
