"""bench.negatives' edited copies of indexed drawings: one per drawing, families in turn, from the seed."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from bench.negatives import COPY_FAMILIES, copy_figures, write_copies


def drawings(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(count):
        image = Image.new("RGB", (160, 120), "white")
        ImageDraw.Draw(image).rectangle(
            [10 + 3 * i, 20, 90 + 2 * i, 100], outline=(200, 30 * i % 255, 40), width=4
        )
        paths.append(folder / f"drawing-{i}.png")
        image.save(paths[-1])
    (folder / "bomb.png").write_bytes(b"not an image")
    return [*paths, folder / "bomb.png"]


def test_copies_take_the_families_in_turn_and_repeat_from_the_seed(tmp_path):
    originals = drawings(tmp_path / "in", 6)
    first = write_copies(originals, 7, seed=3, folder=tmp_path / "a")
    again = write_copies(originals, 7, seed=3, folder=tmp_path / "b")
    assert len(first) == 6  # the unreadable file gets no copy
    assert [c["edit"] for c in first] == [c["edit"] for c in again]
    assert all(c["path"].read_bytes() == d["path"].read_bytes() for c, d in zip(first, again, strict=True))
    named = [c["path"].name.split("-", 2)[2].removesuffix(".png") for c in first]
    assert named == [c["family"] for c in first]
    assert {c["family"] for c in first} <= set(COPY_FAMILIES)
    assert all(c["original"] in originals and c["original"].name != "bomb.png" for c in first)
    other = write_copies(originals, 7, seed=4, folder=tmp_path / "c")
    assert [c["edit"] for c in other] != [c["edit"] for c in first]


def test_copy_figures_count_per_family():
    rows = [
        {"family": "crop", "first": True, "duplicate": True, "wrong_duplicate": False},
        {"family": "crop", "first": True, "duplicate": False, "wrong_duplicate": False},
        {"family": "tilt", "first": False, "duplicate": False, "wrong_duplicate": True},
    ]
    figures = copy_figures(rows)
    assert figures["all"] == {"copies": 3, "first": 2, "duplicate": 1, "wrong_duplicate": 1}
    assert list(figures["by_family"]) == ["tilt", "crop"]  # registry order
    assert figures["by_family"]["crop"] == {"copies": 2, "first": 2, "duplicate": 1, "wrong_duplicate": 0}
