"""The duplicate report as one self-contained HTML page.

Thumbnails are embedded as small base64 JPEGs; each one links to the stored image file
(relative to the page, so the data directory and the page can move together). One table row
per group, the original first; the column headers sort by group size and score.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

from PIL import Image
from tqdm import tqdm

from twice.imageio import ImageError, load_image

LOG = logging.getLogger(__name__)

THUMB_PX = 120
THUMB_QUALITY = 75

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} .facts{margin:.2em 0;color:#444}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left}
th.sort{cursor:pointer;user-select:none;white-space:nowrap} th.sort:hover{background:#eef}
.members{display:flex;flex-wrap:wrap;gap:8px}
.card{width:140px;border:1px solid #ccc;border-radius:6px;padding:4px;background:#fff;font-size:12px}
.card.role-original{border:2px solid #2a6}
.card img,.noimg{width:130px;height:100px;object-fit:contain;background:#eee;display:block}
.noimg{display:flex;align-items:center;justify-content:center;color:#888}
.badge{display:inline-block;border-radius:8px;padding:0 6px;font-size:11px;color:#fff;margin-right:3px}
.b-original{background:#2a6}.b-duplicate{background:#c33}.b-similar{background:#d80}
.b-different{background:#888}.b-variant{background:#57c}.b-change{background:#639}
.warning{margin:.4em 0;padding:.4em .6em;background:#fff4d6;border-left:4px solid #d80}
.src{word-break:break-all;color:#555} .num{font-variant-numeric:tabular-nums} .ev{color:#333}
"""

SCRIPT = """
function sortGroups(key, th){
  const body=document.getElementById('groups-body');
  const rows=[...body.querySelectorAll('tr.group')];
  const desc=th.dataset.dir!=='desc'; th.dataset.dir=desc?'desc':'asc';
  rows.sort((a,b)=>(parseFloat(a.dataset[key])-parseFloat(b.dataset[key]))*(desc?-1:1));
  rows.forEach(r=>body.appendChild(r));
}
"""


def report_html(report: dict, out_path: Path | None = None, progress: bool = False) -> str:
    """The whole page; links to stored images are relative to ``out_path``'s folder."""
    thumbs = Thumbnails()
    base = Path(out_path).resolve().parent if out_path is not None else None
    groups = tqdm(report["groups"], desc="thumbnails", unit="group", disable=not progress)
    rows = "\n".join(group_row(g, thumbs, base) for g in groups)
    if thumbs.failed:
        LOG.warning("%d images could not be read for thumbnails", thumbs.failed)
    empty = f'<tr><td colspan="6">{empty_text(report)}</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>twice duplicate report</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head>
<body>
{header(report)}
<table id="groups">
<thead><tr><th class="sort" id="sort-group" onclick="sortGroups('group',this)">#</th>
<th class="sort" id="sort-size" onclick="sortGroups('size',this)">size &#x21C5;</th>
<th class="sort" id="sort-score" onclick="sortGroups('score',this)">best CNN score &#x21C5;</th>
<th class="sort" id="sort-hash" onclick="sortGroups('hash',this)">closest hash &#x21C5;</th>
<th>change</th><th>images (original first)</th></tr></thead>
<tbody id="groups-body">
{rows or empty}
</tbody></table>
{recall_section(report)}
</body></html>
"""


def empty_text(report: dict) -> str:
    """Why the table is empty: no groups at all, or only groups of known variants."""
    hidden = report["summary"]["variant_only_groups"]
    if not hidden:
        return "No duplicate groups at these thresholds."
    return (
        f"Nothing to list: all {hidden} groups are made only of known variants of one original"
        " (expected duplicates; list them with --include-variants)."
    )


def header(report: dict) -> str:
    s, r, t = report["summary"], report["recall"], report["thresholds"]
    facts = [
        f"{s['images']} images &middot; {s['pairs']} duplicate pairs: {pair_rule_html(report)}"
        f" &middot; model <code>{escape(report['model'])}</code>"
        f" &middot; index {escape(report['index']['type'])}",
        f"{s['groups']} duplicate groups: {s['groups_listed']} listed, {s['variant_only_groups']}"
        f" made only of known variants ({s['variant_only_images']} images, summarised"
        f"{'' if report['include_variants'] else '; list them with --include-variants'})",
        f'<span id="recall-line">Recall check: {r["recovered"]}/{r["total"]}'
        " known variant pairs recovered</span>",
        f"Verdicts against each group's original, as search gives them ({escape(t['source'])}"
        f" thresholds): duplicate = CNN &ge; {t['duplicate']:.6g} or hash &le; {t['hash_duplicate']} bits;"
        f" similar = CNN &ge; {t['similar']:.6g} or hash &le; {t['hash_similar']} bits."
        f" Original = {escape(report['original_rule'])}.",
    ]
    c = report.get("changes")
    if c:
        facts.append(
            f"Since the last report ({escape(c['since'])}): {c['images_added']} images added,"
            f" {c['new_groups']} new groups, {c['grown_groups']} grown, {c['changed_groups']} changed,"
            f" {c['unchanged_groups']} unchanged, {c['gone_groups']} gone."
        )
    if report.get("pagination"):
        p = report["pagination"]
        facts.append(f"Page {p['page']} of {p['pages']} ({p['total_groups']} groups).")
    lines = "\n".join(f'<p class="facts">{f}</p>' for f in facts)
    lines += "".join(f'\n<p class="warning">Warning: {escape(w)}</p>' for w in report.get("warnings", []))
    return f'<h1>Duplicate report</h1>\n<p class="facts">{escape(report["generated_at"])}</p>\n{lines}'


def pair_rule_html(report: dict) -> str:
    by = report["summary"]["pairs_by"]
    rule = f"CNN score &ge; {report['threshold']:.6g} ({by['cnn']})"
    if report["hash_threshold"] >= 0:
        rule += f" or hash &le; {report['hash_threshold']} bits ({by['hash']})"
    return rule


def group_row(group: dict, thumbs: Thumbnails, base: Path | None) -> str:
    score = group["max_score"] if group["max_score"] is not None else 0.0
    distance = group.get("min_hash_distance")
    hash_cell = "&ndash;" if distance is None else f"{distance} bits"
    hash_key = 65 if distance is None else distance
    change = f'<span class="badge b-change">{escape(group["change"])}</span>' if group.get("change") else ""
    hidden = (
        f'<div class="src">+{group["hidden_variants"]} known variants not shown</div>'
        if group["hidden_variants"]
        else ""
    )
    cards = "".join(member_card(m, thumbs, base) for m in group["members"])
    return (
        f'<tr class="group" id="group-{group["group"]}" data-group="{group["group"]}"'
        f' data-size="{group["size"]}" data-score="{score:.6f}" data-hash="{hash_key}">'
        f'<td class="num"><a href="#group-{group["group"]}">{group["group"]}</a></td>'
        f'<td class="num">{group["size"]}</td><td class="num">{score:.4f}</td>'
        f'<td class="num">{hash_cell}</td><td>{change}</td>'
        f'<td><div class="members">{cards}</div>{hidden}</td></tr>'
    )


def member_card(member: dict, thumbs: Thumbnails, base: Path | None) -> str:
    role = member["role"]
    badges = f'<span class="badge b-{role}">{role}</span>' if role != "duplicate" else ""
    if role != "original":
        badges += f'<span class="badge b-{member["verdict"]}">{member["verdict"]}</span>'
    data = thumbs.get(member["id"], member["path"])
    alt = escape(f"image {member['id']}")
    picture = (
        f'<img src="data:image/jpeg;base64,{data}" alt="{alt}">'
        if data
        else '<div class="noimg">no preview</div>'
    )
    link = file_link(member["path"], base)
    transform = (
        f" &middot; {escape(member['transform'])} of #{member['parent_id']}" if member["transform"] else ""
    )
    score = "original" if role == "original" else f"CNN {member['score']:.4f}"
    return (
        f'<div class="card role-{role}"><a href="{escape(link)}">{picture}</a>{badges}'
        f'<div class="num">#{member["id"]} &middot; {score}</div>{evidence_html(member.get("evidence"))}'
        f"{via_html(member)}"
        f'<div class="num">{member["width"]}&times;{member["height"]}'
        f" {escape(member['format'] or '')}{transform}</div>"
        f"{source_html(member)}</div>"
    )


def evidence_html(evidence: dict | None) -> str:
    """What fired against the original: the hash distance and turn when the hash did, and the
    edit in words when verification fitted."""
    if evidence is None:
        return ""
    hashed = evidence["hash"]
    parts = []
    if hashed is not None and "hash" in evidence["signals"]:
        turn = "" if hashed["transform"] == "identity" else f" &middot; {escape(hashed['transform'])}"
        view = f" &middot; {stored_view(hashed)}" if hashed.get("stored") else ""
        parts.append(f'<div class="num ev">hash {hashed["distance"]} bits{view}{turn}</div>')
    verification = evidence.get("verification")
    if verification and verification["verified"]:  # how the copy was made, in words
        parts.append(f'<div class="ev edit">{escape(verification["explanation"])}</div>')
    if evidence["decided_by"]:
        parts.append(f'<div class="ev">by {escape(" + ".join(evidence["decided_by"]))}</div>')
    return "".join(parts)


def stored_view(hashed: dict) -> str:
    """Which stored photometric view matched, on a member's card: the original's or its own."""
    view = escape(hashed["stored"])
    whose = hashed.get("stored_of")
    return {"original": f"{view} view of the original", "member": f"its own {view} view"}.get(whose, view)


def via_html(member: dict) -> str:
    """The chain of duplicate pairs that joined a member not paired with the original itself."""
    if not member.get("via"):
        return ""
    chain = " &rarr; ".join(f"#{i}" for i in member["via"])
    return f'<div class="ev">joined via {chain}</div>'


def source_html(member: dict) -> str:
    source = member["source"] or ""
    shown = escape(source if len(source) <= 80 else "…" + source[-79:])
    if is_web_link(source):
        html = f'<div class="src"><a href="{escape(source)}">{shown}</a></div>'
    else:
        html = f'<div class="src">{shown}</div>'
    page_url = member.get("page_url")
    if page_url and is_web_link(page_url):
        html += f'<div class="src"><a href="{escape(page_url)}">page</a></div>'
    elif page_url:  # javascript:, data:, ... shown, never followed
        html += f'<div class="src">page: {escape(page_url)}</div>'
    return html


def is_web_link(url: str) -> bool:
    """Whether ``url`` may become a link: http(s) only. Sources and page URLs come from
    uploads and crawled pages; a ``javascript:`` or ``data:`` href would run in the reader's
    browser. The raw text must start with the scheme: browsers drop leading spaces and control
    characters, so a stripped check would pass ``" javascript:..."``."""
    return url[:8].lower().startswith(("http://", "https://"))


def file_link(path: str, base: Path | None) -> str:
    """A link to a stored image: relative to the page's folder when there is one."""
    target = Path(path).resolve()
    if base is not None:
        try:
            return quote(Path(os.path.relpath(target, base)).as_posix())
        except ValueError:  # another drive on Windows
            pass
    return target.as_uri()


def recall_section(report: dict) -> str:
    r = report["recall"]
    rows = "".join(
        f'<tr><td>{escape(t)}</td><td class="num">{v["recovered"]}/{v["total"]}</td></tr>'
        for t, v in r["by_transform"].items()
    )
    missed = "".join(
        f"<li>#{m['id']} ({escape(m['transform'] or 'unknown')} of #{m['parent_id']}):"
        f" CNN {m['score']:.4f}"
        + ("" if m.get("hash_distance") is None else f", hash {m['hash_distance']} bits")
        + "</li>"
        for m in r["missed"]
    )
    more = f"<p>{r['missed_total']} missed in all.</p>" if r["missed_total"] > len(r["missed"]) else ""
    return (
        f'<h2 id="recall">Known variant pairs</h2>'
        f"<p>{r['recovered']}/{r['total']} recovered at the report thresholds"
        f" ({r['by_signal']['hash']} by the hash, {r['by_signal']['cnn']} by the CNN score;"
        " a pair can be found by both).</p>"
        f"<table><thead><tr><th>transform</th><th>recovered</th></tr></thead><tbody>{rows}</tbody></table>"
        + (f"<h3>Missed</h3><ul>{missed}</ul>{more}" if missed else "")
    )


class Thumbnails:
    """Base64 JPEG thumbnails, made once per image id."""

    def __init__(self, size: int = THUMB_PX) -> None:
        self.size, self.cache, self.failed = size, {}, 0

    def get(self, image_id: int, path: str) -> str | None:
        if image_id not in self.cache:
            self.cache[image_id] = self._make(path)
        return self.cache[image_id]

    def _make(self, path: str) -> str | None:
        try:
            image = load_image(path).image
        except (ImageError, OSError) as exc:
            self.failed += 1
            LOG.debug("no thumbnail for %s: %s", path, exc)
            return None
        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=THUMB_QUALITY)
        return base64.b64encode(buffer.getvalue()).decode("ascii")
