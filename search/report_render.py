"""A finished report as output: one page of it, JSON, CSV, HTML (``search.report_html``), and
the few lines the terminal shows."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

LOG = logging.getLogger(__name__)

FORMATS = ("html", "json", "csv")
MAX_PER_PAGE = 1000
CSV_COLUMNS = (
    "group",
    "group_size",
    "role",
    "id",
    "score",
    "verdict",
    "hash_distance",
    "hash_transform",
    "hash_stored",
    "hash_stored_of",
    "decided_by",
    "inliers",
    "edit",
    "via",
    "source",
    "page_url",
    "path",
    "width",
    "height",
    "format",
    "bytes",
    "added_at",
    "parent_id",
    "transform",
    "change",
)


def check_page(page: int | None, per_page: int | None) -> tuple[int | None, int | None]:
    """Validate paging arguments: both or neither; page >= 1; 1 <= per_page <= MAX_PER_PAGE."""
    if page is None and per_page is None:
        return None, None
    page = 1 if page is None else page
    per_page = 50 if per_page is None else per_page
    if not isinstance(page, int) or isinstance(page, bool) or page < 1:
        raise ValueError(f"page must be an integer >= 1, got {page!r}")
    if not isinstance(per_page, int) or isinstance(per_page, bool) or not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be an integer from 1 to {MAX_PER_PAGE}, got {per_page!r}")
    return page, per_page


def paginate(report: dict, page: int | None, per_page: int | None) -> dict:
    total = len(report["groups"])
    if page is None:
        report["pagination"] = None
        return report
    start = (page - 1) * per_page
    report["groups"] = report["groups"][start : start + per_page]
    report["pagination"] = {
        "page": page,
        "per_page": per_page,
        "total_groups": total,
        "pages": max(1, -(-total // per_page)),
    }
    return report


def report_csv(report: dict) -> str:
    """One row per listed member; the original of each group first (role ``original``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for group in report["groups"]:
        for member in group["members"]:
            writer.writerow(
                {
                    **member,
                    **evidence_columns(member["evidence"]),
                    "via": via_cell(member),
                    "group": group["group"],
                    "group_size": group["size"],
                    "change": group.get("change"),
                }
            )
    return buffer.getvalue()


def evidence_columns(evidence: dict | None) -> dict:
    """The evidence as flat CSV cells (empty for the original, compared with nothing)."""
    if evidence is None:
        return {}
    hashed = evidence["hash"] or {}
    verification = evidence.get("verification") or {}
    return {
        "inliers": verification.get("inliers"),
        "edit": verification.get("explanation"),
        "hash_distance": hashed.get("distance"),
        "hash_transform": hashed.get("transform"),
        "hash_stored": hashed.get("stored"),
        "hash_stored_of": hashed.get("stored_of"),
        "decided_by": "+".join(evidence["decided_by"]),
    }


def via_cell(member: dict) -> str:
    return " ".join(str(i) for i in member.get("via", ()))


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def render(report: dict, fmt: str, out_path: Path | None = None, progress: bool = False) -> str:
    """The report as text in ``fmt`` (html, json or csv); HTML links are relative to ``out_path``."""
    if fmt == "json":
        return report_json(report)
    if fmt == "csv":
        return report_csv(report)
    if fmt == "html":
        from .report_html import report_html

        return report_html(report, out_path, progress)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def format_for(path: str | Path | None, fmt: str | None) -> str:
    """The output format: the one given, else the file suffix, else HTML."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(str(path)).suffix.lower().lstrip(".") if path not in (None, "-") else ""
    return {"htm": "html", "html": "html", "json": "json", "csv": "csv"}.get(suffix, "html")


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal."""
    s, r = report["summary"], report["recall"]
    lines = [
        f"{s['images']} images, {s['pairs']} duplicate pairs: {pair_rule(report)}"
        f" ({report['thresholds']['source']} thresholds, model {report['model']},"
        f" index {report['index']['type']})",
        f"{s['groups']} duplicate groups: {s['groups_listed']} listed,"
        f" {s['variant_only_groups']} of known variants only (summarised);"
        f" {s['duplicate_images']} images are copies of another",
        f"recall check: {r['recovered']}/{r['total']} known variant pairs recovered"
        + ("".join(f"; {t} {v['recovered']}/{v['total']}" for t, v in r["by_transform"].items())),
    ]
    if s["hashed_images"] < s["images"] and report["hash_threshold"] >= 0:
        lines.append(
            f"{s['images'] - s['hashed_images']} images have no usable perceptual hash, so only CNN pairs:"
            " run `twice reindex` to compute them"
        )
    if s["pending"]:
        lines.append(f"{s['pending']} catalogued images have no vector yet: run `twice reindex`")
    lines += [f"warning: {w}" for w in report["warnings"]]
    c = report["changes"]
    if c:
        lines.append(
            f"since the last report ({c['since']}): {c['images_added']} images added,"
            f" {c['new_groups']} new groups, {c['grown_groups']} grown, {c['changed_groups']} changed,"
            f" {c['unchanged_groups']} unchanged, {c['gone_groups']} gone"
        )
    if report["index"]["approximate"]:
        lines.append(
            f"approximate index (nprobe {report['index']['nprobe']}): a few pairs may be missed;"
            " raise --nprobe to search more of it"
        )
    cache = report["cache"]
    how = "all pairs computed" if cache["full"] else f"{cache['reused_pairs']} cached pairs reused"
    hashed = cache["hash"]
    if hashed.get("off"):
        hashes = "hash pairs off"
    else:
        reused = (
            "all hash pairs computed"
            if hashed["full"]
            else f"{hashed['reused_pairs']} cached hash pairs reused"
        )
        hashes = f"{reused}, {hashed['decoded']} images hashed"
    lines.append(f"{how}; searched {cache['searched']} vectors; {hashes}; {report['took_ms'] / 1000:.1f}s")
    return lines


def pair_rule(report: dict) -> str:
    """``CNN >= 0.9 (12) or hash <= 8 bits (30)``: the pairing rule and what each found."""
    by = report["summary"]["pairs_by"]
    rule = f"CNN >= {report['threshold']:.6g} ({by['cnn']})"
    if report["hash_threshold"] >= 0:
        rule += f" or hash <= {report['hash_threshold']} bits ({by['hash']})"
    return rule
