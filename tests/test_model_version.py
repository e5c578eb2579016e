"""The model version read from a checkpoint's header equals the built model's, a reindex with
nothing to embed never builds the network, and an upload is decoded as reindex decodes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from imagegen import image_bytes, make_image, write_images
from twice.hashing import row_hashes
from twice.indexer import Catalog, VectorIndex, reindex
from twice.library import Library
from twice.model import Embedder, save_checkpoint
from twice.model.deferred import DeferredEmbedder, deferred_embedder
from twice.model.version import SHIPPED_CHECKPOINT, model_facts, read_checkpoint_header


def test_the_header_gives_the_built_models_version_for_a_saved_and_the_shipped_checkpoint(
    tmp_path, options, embedder
):
    path = save_checkpoint(embedder.net, tmp_path / "model.pt", image_size=48, meta={"note": [1, 2.5]})
    saved = options.with_overrides(checkpoint=str(path))
    facts = model_facts(saved)
    built = Embedder.from_options(saved)
    assert (facts.version, facts.dim, facts.image_size, facts.draft_side) == (
        built.version,
        built.dim,
        48,
        built.draft_side,
    )
    shipped = options.with_overrides(shipped_checkpoint=True)
    assert SHIPPED_CHECKPOINT.exists()
    assert model_facts(shipped).version == Embedder.from_options(shipped).version


def test_weights_without_a_readable_header_are_built_to_learn_their_version(tmp_path, options, embedder):
    state_dict = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, state_dict)
    pickled = tmp_path / "old.pt"
    pickled.write_bytes(pickle.dumps({"format": "twice-embedder"}))
    assert read_checkpoint_header(pickled) is None
    assert model_facts(options) is None  # seeded random weights: no file at all
    for path in (state_dict, pickled):
        assert model_facts(options.with_overrides(checkpoint=str(path))) is None
    assert deferred_embedder(options, lambda: embedder) is embedder


def test_a_rerun_with_nothing_to_embed_does_not_build_the_network(tmp_path, options, embedder):
    path = save_checkpoint(embedder.net, tmp_path / "model.pt", image_size=64)
    options = options.with_overrides(checkpoint=str(path))
    builds = []

    def build() -> Embedder:
        builds.append(1)
        return Embedder.from_options(options)

    write_images(tmp_path / "in", 5)
    first = reindex([tmp_path / "in"], options, DeferredEmbedder(model_facts(options), build), progress=False)
    assert (first.added, len(builds)) == (5, 1)
    # Its images/s leave out the network's build, which the summary states apart.
    assert 0 < first.model_seconds < first.seconds
    assert first.images_per_s == pytest.approx(5 / (first.seconds - first.model_seconds))
    again = reindex([tmp_path / "in"], options, DeferredEmbedder(model_facts(options), build), progress=False)
    assert (again.unchanged, again.added, again.vectors, len(builds)) == (5, 0, 5, 1)
    assert again.model_seconds == 0.0
    assert again.model_version == first.model_version


def test_an_uploaded_jpeg_is_decoded_hashed_and_embedded_as_reindex_does(tmp_path, options, embedder):
    # A JPEG large enough to be decoded at reduced size (draft): upload and reindex must agree.
    data = image_bytes(make_image(7, (640, 480)), "JPEG", quality=90)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(data)
    with Library(options, embedder) as library:
        library.add_image(data, "upload.jpg")
    indexed = options.with_overrides(data_dir=tmp_path / "indexed")
    reindex([tmp_path / "in"], indexed, embedder, progress=False)
    rows, vectors = [], []
    for opts in (options, indexed):
        catalog = Catalog(opts.catalog_url)
        rows.append(row_hashes(catalog.get_many([1])[1]))
        catalog.close()
        vectors.append(VectorIndex.load(opts.index_path).vectors()[1][0])
    assert rows[0] == rows[1]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)
