"""`twice demo`, the README's first command, end to end on a tiny generated collection."""

from __future__ import annotations

import re

from twice.cli import main


def test_demo_indexes_variants_and_checks_every_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TWICE_IMAGE_SIZE", "64")
    monkeypatch.setenv("TWICE_WORKERS", "0")
    args = ["--data-dir", str(tmp_path), "--device", "cpu", "-q", "demo", "--count", "4", "--queries", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    checks = dict(re.findall(r"^\s+(\S+)\s+original in top 5: (\d+/\d+)", out, re.MULTILINE))
    assert set(checks) == {"rotate", "mirror", "bright", "dark", "all"}
    # d4 pooling and the dihedral hash make turned and mirrored copies exact, whatever the weights.
    assert checks["rotate"] == "4/4" and checks["mirror"] == "4/4"
    assert checks["all"].endswith("/16")
    assert "top result belongs to the query's original" in out
    assert "thresholds stored" in out  # step 4 calibrated them for this model
    assert "default thresholds -> fitted" in out  # and said what judged before (random weights ship none)


def test_demo_no_check_skips_step_6(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TWICE_IMAGE_SIZE", "64")
    monkeypatch.setenv("TWICE_WORKERS", "0")
    args = ["--data-dir", str(tmp_path), "--device", "cpu", "-q", "demo", "--count", "2", "--queries", "1"]
    code = main([*args, "--no-check"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "== 5." in out and "== 6." not in out
