"""``twice bench speed``'s pipeline parts: the unchanged re-run, uploads by index size, and the
reindex stage profile, at smoke-test sizes."""

from __future__ import annotations

import json

from twice.cli import main


def test_bench_speed_rerun_upload_and_reindex_stages(tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["-q", "--data-dir", str(tmp_path / "data"), "bench", "speed", "--quick"]
    argv += ["--results-dir", str(results), "--parts", "reindex,rerun,upload", "--reindex-images", "3"]
    argv += ["--rerun-files", "40", "--upload-sizes", "20,60", "--uploads", "2"]
    assert main(argv) == 0
    payload = json.loads(next(results.glob("speed-*-quick-*.json")).read_text())
    rerun = payload["rerun"]
    assert (rerun["files"], rerun["first_added"], rerun["rerun_unchanged"]) == (40, 40, 40)
    assert rerun["rerun_already"] == 0 and rerun["cli_rerun_s"] > 0
    assert [(row["vectors"], row["n"]) for row in payload["upload"]] == [(20, 2), (60, 2)]
    assert all(row["rewrite_p50_ms"] > 0 and row["append_p50_ms"] > 0 for row in payload["upload"])
    stages = payload["reindex"]["stages_s"]
    assert set(stages) == {"decode", "hash", "store", "embed", "write", "wait"} and stages["embed"] > 0
    out = capsys.readouterr().out
    assert "Where the reindex time went" in out and "POST /images" in out and "unchanged, not read" in out
