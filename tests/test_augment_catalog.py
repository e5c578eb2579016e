"""``twice augment`` on a real catalog: variant rows, idempotence, bad input, preview."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from imagegen import image_bytes, make_image
from twice.augment import TRANSFORMS, apply_transform, augment_catalog
from twice.cli import main
from twice.imageio import decode_image
from twice.indexer import ImageRow, Indexer, reindex
from twice.search import SearchEngine

VERSION, DIM = "test-no-model", 4


def add_originals(options, count: int, start: int = 0, size=(96, 72)) -> list[int]:
    """Originals added through the real write path (no model needed)."""
    indexer = Indexer(options, VERSION, DIM)
    try:
        return [
            indexer.add_bytes(image_bytes(make_image(seed, size)), source=f"/photos/img_{seed}.png").row.id
            for seed in range(start, start + count)
        ]
    finally:
        indexer.close()


def all_rows(options) -> list[ImageRow]:
    indexer = Indexer(options, VERSION, DIM)
    try:
        with indexer.catalog.session() as session:
            return list(session.scalars(select(ImageRow).order_by(ImageRow.id)))
    finally:
        indexer.close()


def run_augment(options, *args: str) -> int:
    return main(["--data-dir", str(options.data_dir), "-q", "augment", *args])


def stored_image(options, row: ImageRow) -> Image.Image:
    return decode_image((options.images_dir / row.stored_path).read_bytes()).image


def test_augment_writes_the_original_four_linked_to_each_original(options, capsys):
    originals = add_originals(options, 3)
    assert run_augment(options) == 0
    out = capsys.readouterr().out
    assert "added 12 variants (3 bright, 3 dark, 3 mirror, 3 rotate)" in out
    assert "run `twice reindex` to embed the 12 new variants" in out

    rows = all_rows(options)
    by_id = {row.id: row for row in rows}
    variants = [row for row in rows if row.parent_id is not None]
    assert len(rows) == 15 and len(variants) == 12
    assert sorted((v.parent_id, v.transform) for v in variants) == sorted(
        (o, t) for o in originals for t in ("rotate", "mirror", "bright", "dark")
    )
    for variant in variants:
        parent = by_id[variant.parent_id]
        assert parent.parent_id is None and parent.transform is None
        assert variant.source == f"{parent.source}#{variant.transform}"
        assert variant.format == "PNG"  # lossless: the stored pixels are exactly the transform's
        expected = apply_transform(stored_image(options, parent), variant.transform)
        np.testing.assert_array_equal(np.asarray(stored_image(options, variant)), np.asarray(expected))
        assert (variant.width, variant.height) == expected.size


def test_augment_is_idempotent(options, capsys):
    add_originals(options, 2)
    assert run_augment(options) == 0
    first = [(r.id, r.sha256, r.parent_id, r.transform) for r in all_rows(options)]
    files = sorted(p.name for p in options.images_dir.rglob("*") if p.is_file())
    capsys.readouterr()

    assert run_augment(options, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_added"] == 0 and summary["existing"] == 8
    assert [(r.id, r.sha256, r.parent_id, r.transform) for r in all_rows(options)] == first
    assert sorted(p.name for p in options.images_dir.rglob("*") if p.is_file()) == files
    # variants are never treated as originals, so there are no variants of variants
    assert run_augment(options, "--transforms", "rotate:90,flip") == 0
    assert len(all_rows(options)) == len(first) + 2


def test_new_transforms_fill_in_and_only_new_skips_augmented_originals(options, capsys):
    old = add_originals(options, 2)
    assert run_augment(options) == 0
    new = add_originals(options, 1, start=10)
    assert run_augment(options, "--transforms", "all", "--only-new") == 0
    rows = all_rows(options)
    count = lambda parent: sum(r.parent_id == parent for r in rows)  # noqa: E731
    assert [count(p) for p in old + new] == [4, 4, len(TRANSFORMS)]

    assert run_augment(options, "--transforms", "jpeg:30,crop:0.5:3") == 0
    rows = all_rows(options)
    assert [count(p) for p in old + new] == [6, 6, len(TRANSFORMS) + 2]
    jpeg = next(r for r in rows if r.transform == "jpeg:30")
    assert jpeg.format == "JPEG"  # the JPEG itself is stored: its artefacts are the point


def test_library_call_limited_to_ids(options):
    ids = add_originals(options, 3)
    indexer = Indexer(options, VERSION, DIM)
    try:
        summary = augment_catalog(indexer, ["mirror"], ids=[ids[1]], progress=False)
    finally:
        indexer.close()
    assert summary.originals == 1 and summary.added == {"mirror": 1}
    assert summary.lines()[-1] == "run `twice reindex` to embed the 1 new variants"
    assert summary.lines(hint=False)[-1].startswith("took ")
    assert [r.parent_id for r in all_rows(options) if r.parent_id] == [ids[1]]


def test_undecodable_originals_are_skipped_and_counted(options, capsys):
    ids = add_originals(options, 3)
    rows = {r.id: r for r in all_rows(options)}
    truncated = options.images_dir / rows[ids[0]].stored_path
    truncated.write_bytes(truncated.read_bytes()[:200])
    (options.images_dir / rows[ids[1]].stored_path).unlink()

    assert run_augment(options) == 0
    out = capsys.readouterr().out
    assert "added 4 variants" in out
    assert "skipped 2 (1 truncated, 1 unreadable)" in out or "skipped 2 (1 unreadable, 1 truncated)" in out
    assert {r.parent_id for r in all_rows(options) if r.parent_id} == {ids[2]}


def test_large_originals_are_bounded_before_transforming(options, capsys):
    (original,) = add_originals(options, 1, size=(200, 100))
    assert run_augment(options, "--max-side", "50", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bounded"] == 1
    variants = [r for r in all_rows(options) if r.parent_id == original]
    assert sorted((r.transform, r.width, r.height) for r in variants) == [
        ("bright", 50, 25),
        ("dark", 50, 25),
        ("mirror", 50, 25),
        ("rotate", 25, 50),
    ]
    assert all(r.meta == {"augment": {"bounded_from": [200, 100]}} for r in variants)
    with pytest.raises(ValueError, match="max_side must be at least 16 pixels, not 4"):
        indexer = Indexer(options, VERSION, DIM)
        try:
            augment_catalog(indexer, max_side=4, progress=False)
        finally:
            indexer.close()


def test_variant_with_the_same_bytes_as_another_is_counted_not_stored_twice(options, capsys):
    indexer = Indexer(options, VERSION, DIM)
    try:
        flat = indexer.add_bytes(image_bytes(Image.new("RGB", (16, 16), (10, 200, 30))), "/flat.png").row
    finally:
        indexer.close()
    # a flat square: rotate and mirror give the same pixels, hence the same PNG bytes
    assert run_augment(options, "--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["total_added"] == 3 and first["identical"] == 1
    assert run_augment(options, "--json") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["total_added"] == 0 and len(all_rows(options)) == 4
    assert {r.transform for r in all_rows(options) if r.parent_id == flat.id} == {"rotate", "bright", "dark"}


def test_bad_transform_names_are_refused_with_the_list(options, capsys):
    add_originals(options, 1)
    assert run_augment(options, "--transforms", "rotate,spin") == 1
    err = capsys.readouterr().err
    assert "unknown transform 'spin'; valid transforms: rotate[:90|180|270], mirror, flip" in err
    assert run_augment(options, "--transforms", "rotate:45") == 1
    assert "degrees must be one of 90|180|270" in capsys.readouterr().err
    assert len(all_rows(options)) == 1  # nothing written
    assert run_augment(options, "-o", "x.png") == 1
    assert "only used with --preview" in capsys.readouterr().err


def test_empty_catalog_says_what_to_do(options, capsys):
    assert run_augment(options) == 0
    assert "no originals in the catalog yet" in capsys.readouterr().out


def test_preview_writes_a_labelled_contact_sheet(options, tmp_path, capsys):
    source = tmp_path / "photo.png"
    make_image(3, (120, 90)).save(source)
    sheet_path = tmp_path / "out" / "grid.png"
    assert run_augment(options, "--preview", str(source), "-o", str(sheet_path)) == 0
    assert f"{len(TRANSFORMS)} variants" in capsys.readouterr().out
    with Image.open(sheet_path) as sheet:
        assert sheet.format == "PNG"
        full = sheet.size
    assert (
        run_augment(
            options, "--preview", str(source), "--transforms", "rotate,rotate+mirror", "-o", str(sheet_path)
        )
        == 0
    )
    with Image.open(sheet_path) as sheet:
        small = np.asarray(sheet.convert("RGB"))
    # every transform's tile plus the original in 4 columns, versus 3 tiles in one row
    assert full[0] > small.shape[1] and full[1] > 3 * small.shape[0]
    # the original tile holds the picture, scaled down: its centre pixel is the picture's centre colour
    assert not np.array_equal(small[100, 100], small[2, 2])
    assert not (options.data_dir / "catalog.sqlite").exists()  # preview touches no catalog

    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    assert run_augment(options, "--preview", str(bogus), "-o", str(sheet_path)) == 1
    assert "not an image" in capsys.readouterr().err


def test_variants_are_embedded_by_reindex_and_found_as_themselves(options, embedder):
    add_originals(options, 2)
    indexer = Indexer(options, embedder.version, embedder.dim)
    try:
        summary = augment_catalog(indexer, progress=False)
    finally:
        indexer.close()
    assert summary.total_added == 8
    result = reindex([], options, embedder, progress=False)
    assert result.embedded_pending == 10 and result.vectors == 10

    engine = SearchEngine.open(options, embedder)
    try:
        for row in all_rows(options):
            if row.parent_id is None:
                continue
            data = (options.images_dir / row.stored_path).read_bytes()
            top = engine.search_bytes(data, k=5)["results"][0]
            assert (top["id"], top["exact"], top["parent_id"], top["transform"]) == (
                row.id,
                True,
                row.parent_id,
                row.transform,
            )
    finally:
        engine.close()
    # a second augment after reindex adds nothing and leaves nothing pending
    indexer = Indexer(options, embedder.version, embedder.dim)
    try:
        assert augment_catalog(indexer, progress=False).total_added == 0
        assert len(indexer.pending_ids()) == 0
    finally:
        indexer.close()


def test_stored_variant_bytes_decode_like_the_transform(options):
    (original,) = add_originals(options, 1)
    indexer = Indexer(options, VERSION, DIM)
    try:
        augment_catalog(indexer, ["gray", "jpeg:20"], progress=False)
    finally:
        indexer.close()
    rows = {r.transform: r for r in all_rows(options)}
    parent = stored_image(options, rows[None])
    gray = options.images_dir / rows["gray"].stored_path
    with Image.open(io.BytesIO(gray.read_bytes())) as raw:
        assert raw.mode == "L"  # one channel on disk
    np.testing.assert_array_equal(
        np.asarray(stored_image(options, rows["gray"])), np.asarray(apply_transform(parent, "gray"))
    )
    np.testing.assert_array_equal(
        np.asarray(stored_image(options, rows["jpeg:20"])), np.asarray(apply_transform(parent, "jpeg:20"))
    )
