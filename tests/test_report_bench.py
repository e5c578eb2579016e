"""`twice report --bench`: synthetic collections through the real report, stage by stage."""

from __future__ import annotations

import json
from pathlib import Path

from twice.cli import main


def test_report_bench_finds_every_planted_group_and_writes_figures(tmp_path, capsys):
    # No image files behind the synthetic rows, so no image has a hash: the hash side is empty.
    args = ["--data-dir", str(tmp_path), "-q", "report", "--bench", "400", "--bench-index", "flat,ivf"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("n=")]
    assert len(rows) == 2 and all("all found True" in row for row in rows)
    written = Path(out.strip().splitlines()[-1].removeprefix("wrote "))
    results = json.loads(written.read_text())
    assert [r["index"] for r in results] == ["flat", "ivf"]
    for r in results:
        assert r["full"]["groups_found"] == r["planted_groups"] == 4
        assert r["incremental"]["found_all"] and r["grow"]["added"] == 4
