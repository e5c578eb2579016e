"""`twice bench report`: synthetic collections through the real report, stage by stage."""

from __future__ import annotations

import json

import pytest

from bench.commands import main as bench_main
from twice.cli import main


def test_report_bench_finds_every_planted_group_and_writes_figures(tmp_path, capsys):
    # No image files behind the synthetic rows, so no image has a hash: the hash side is empty.
    results_dir = tmp_path / "results"
    args = ["--data-dir", str(tmp_path), "-q", "bench", "report", "--sizes", "400", "--index", "flat,ivf"]
    assert main([*args, "--results-dir", str(results_dir)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("n=")]
    assert len(rows) == 2 and all("all found True" in row for row in rows)
    written = sorted(results_dir.glob("report-*.json"))
    assert len(written) == 1 and f"results: {written[0]}, {results_dir / 'report.md'}" in out
    payload = json.loads(written[0].read_text())
    assert payload["kind"] == "report" and payload["config"]["sizes"] == [400]
    assert [r["index"] for r in payload["runs"]] == ["flat", "ivf"]
    for r in payload["runs"]:
        assert r["full"]["groups_found"] == r["planted_groups"] == 4
        assert r["incremental"]["found_all"] and r["grow"]["added"] == 4
        # The incremental run searched only the added vectors and reused the rest.
        assert r["incremental"]["cache"]["searched"] == 4 and not r["incremental"]["cache"]["full"]
        # Each stage's own memory: not the parent's peak (this process holds torch), which Linux
        # carries into a child's ru_maxrss.
        assert 0 < r["full"]["rss_before_mb"] <= r["full"]["peak_rss_mb"] < 600
    table = (results_dir / "report.md").read_text()
    assert "| 400 | flat |" in table and "| 400 | ivf |" in table
    assert not list(tmp_path.glob("twice-bench-*"))  # the synthetic collections are removed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "50"], "--sizes values must be at least 100, got 50"),
        (["--sizes", "1e4"], "--sizes takes comma-separated integers, got '1e4'"),
        (["--sizes", "400", "--index", "flat,hnsw"], "--index takes flat and/or ivf, got 'flat,hnsw'"),
        (["--sizes", "400", "--nprobe", "0"], "--nprobe must be at least 1, got 0"),
    ],
)
def test_report_bench_rejects_bad_arguments_before_running(tmp_path, capsys, argv, message):
    assert bench_main(["report", *argv, "--results-dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
