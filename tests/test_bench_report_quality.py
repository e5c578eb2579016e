"""`twice bench report-quality`: the scoring of a report's groups against the true families, and
the folder it builds (each original's copies take the edit rows in turn)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.report_quality import ReportQualityConfig, copy_edits, run_report_quality, score_groups
from bench.sources import edit_rows


def test_score_groups_counts_pairs_and_whole_families_by_hand():
    # Families: A = {a0, a1, a2} (3 pairs), B = {b0, b1} (1 pair), C = {c0, c1, c2, c3} (6 pairs).
    families = [["a0", "a1", "a2"], ["b0", "b1"], ["c0", "c1", "c2", "c3"]]
    groups = [
        ["a0", "a1", "a2"],  # A whole: 3 right pairs
        ["b0", "b1", "x"],  # B with a stranger: 1 right, 2 wrong
        ["c0", "c1"],  # C split: 1 right
        ["c2", "y", "z"],  # 0 right, 3 wrong
    ]
    scores = score_groups(groups, families)
    assert (scores["pairs_found"], scores["pairs_right"], scores["pairs_true"]) == (3 + 3 + 1 + 3, 5, 10)
    assert scores["precision"] == pytest.approx(5 / 10)
    assert scores["recall"] == pytest.approx(5 / 10)
    # Only A is whole with nothing else: B has a stranger, C is split.
    assert (scores["families_whole"], scores["families"]) == (1, 3)
    assert scores["whole"] == pytest.approx(1 / 3)
    assert scores["largest"] == 3 and scores["groups"] == 4
    low, high = scores["precision_ci95"]
    assert low < 0.5 < high


def test_score_groups_perfect_and_empty_reports():
    families = [[1, 2], [3, 4, 5]]
    perfect = score_groups([[5, 4, 3], [2, 1]], families)  # order within and among groups is free
    assert (perfect["precision"], perfect["recall"], perfect["whole"]) == (1.0, 1.0, 1.0)
    # One group of everything: every true pair found, but 6 of 10 pairs wrong and no family alone.
    merged = score_groups([[1, 2, 3, 4, 5]], families)
    assert merged["recall"] == 1.0 and merged["precision"] == pytest.approx(4 / 10)
    assert merged["whole"] == 0.0 and merged["largest"] == 5
    # Nothing reported: nothing wrong, nothing found.
    empty = score_groups([], families)
    assert (empty["precision"], empty["recall"], empty["whole"], empty["largest"]) == (1.0, 0.0, 0.0, 0)


def test_copies_take_every_edit_row_in_turn_and_are_reproducible():
    rows = edit_rows()
    copies = 12
    drawn = [copy_edits(rows, 0, slot, copies) for slot in range(len(rows))]
    names = [edit.row for edits in drawn for edit in edits]
    # Over as many originals as there are rows, every row is drawn `copies` times.
    assert {name: names.count(name) for name in set(names)} == {row.name: copies for row in rows}
    assert all(len({e.row for e in edits}) == copies for edits in drawn)  # no row twice for one original
    again = copy_edits(rows, 0, 3, copies)
    assert [e.specs for e in again] == [e.specs for e in drawn[3]]
    other_seed = copy_edits(rows, 1, 3, copies)
    assert [e.specs for e in other_seed] != [e.specs for e in drawn[3]]
    assert np.all([len(e.specs) >= 1 for e in again])


def test_results_name_the_command_as_a_user_retypes_it():
    from bench.results import command_line

    assert command_line(["/x/bench/__main__.py", "report-quality", "--copies", "3"]) == (
        "twice bench report-quality --copies 3"
    )
    assert command_line(["/venv/bin/twice", "bench", "quality"]) == "twice bench quality"


def test_report_quality_runs_the_report_on_a_folder_and_scores_it(tmp_path):
    from conftest import make_options

    config = ReportQualityConfig(
        originals=2, copies=3, drawings=3, others=2, install=False, work_dir=tmp_path / "work", progress=False
    )
    payload, markdown = run_report_quality(
        config, make_options(tmp_path / "unused"), "twice bench report-quality"
    )
    assert payload["set"]["copies"] == 6 and payload["set"]["missing_from_catalog"] == []
    scores = payload["scores"]
    assert scores["families"] == 2 and scores["pairs_true"] == 2 * 6  # 4 images a family: 6 pairs each
    assert 0.0 <= scores["recall"] <= 1.0 and scores["pairs_right"] <= scores["pairs_found"]
    # Every copy is counted once per edit, and each one missed is listed with its verdict.
    assert sum(f["copies"] for f in payload["per_edit"].values()) == 6
    kept = sum(f["with_original"] for f in payload["per_edit"].values())
    assert len(payload["missed"]) == 6 - kept
    assert all(m["verdict"] in ("duplicate", "similar", "different") for m in payload["missed"])
    assert "| pair precision |" in markdown and payload["thresholds"]["source"] in ("default", "shipped")
    # The folder holds the originals, their copies and the unrelated images, flat, as a user's does.
    files = sorted(p.name for p in (tmp_path / "work" / "folder").iterdir())
    assert len(files) == 2 + 6 + sum(payload["set"]["unrelated"].values())
