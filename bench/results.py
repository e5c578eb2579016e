"""Results on disk: ``<kind>-<timestamp>.json`` per run, ``<kind>.md`` for the latest run."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from twice.files import atomic_write

LOG = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).parent / "results"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command as a user would retype it."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "bench":
        argv[0:1] = ["twice", "bench"]  # `python -m bench KIND` is `twice bench KIND`
    elif argv and Path(argv[0]).name in ("twice", "cli.py", "__main__.py"):
        argv[0] = "twice"
    return shlex.join(argv)


def fmt(value: object, digits: int = 3) -> str:
    """Table cell text: floats rounded, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells: {[len(r) for r in rows]}")
    align = [
        "---:" if rows and all(isinstance(r[i], int | float) or r[i] is None for r in rows) else "---"
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def stamp_lines(payload: dict) -> list[str]:
    """The machine, date, model and command lines that head every markdown result."""
    m = payload["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    lines = [
        f"- machine: {m['cpu']}{_cpu_kind(m)}, {m['cores']} cores, {m.get('memory_gib')} GiB{gpu};"
        f" load average at start {m.get('load_average')}",
        f"- date: {m['date']}; torch {m['torch']}, faiss {m['faiss']}, opencv {m.get('opencv', '?')},"
        f" onnxruntime {m.get('onnxruntime') or 'none'}",
    ]
    if payload.get("model"):
        lines.append(f"- model: `{payload['model']}`")
    lines.append(f"- command: `{payload['command']}`")
    return lines


def _cpu_kind(machine: dict) -> str:
    """The CPU features that decide what ``auto`` precision picks, as " (fast bf16, VNNI)"."""
    kinds = [name for key, name in (("fast_bf16", "fast bf16"), ("vnni", "VNNI")) if machine.get(key)]
    return f" ({', '.join(kinds)})" if kinds else ""


def write_results(
    kind: str, payload: dict, markdown: str, results_dir: str | Path = RESULTS_DIR
) -> tuple[Path, Path]:
    """Write the run's JSON and replace ``<kind>.md``; returns both paths."""
    if not kind or "/" in kind:
        raise ValueError(f"bad results kind {kind!r}")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path = results_dir / f"{kind}-{stamp}.json"
    md_path = results_dir / f"{kind}.md"
    atomic_write(json_path, (json.dumps(payload, indent=2, default=_jsonable) + "\n").encode())
    atomic_write(md_path, (markdown.rstrip() + "\n").encode())
    LOG.info("results: %s, %s", json_path, md_path)
    return json_path, md_path


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
