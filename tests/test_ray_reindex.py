"""``twice reindex --ray`` on a real local Ray cluster: the same index as the single-machine path."""

from __future__ import annotations

import numpy as np
import pytest

from imagegen import write_images
from twice.indexer import Indexer, VectorIndex, reindex

ray = pytest.importorskip("ray")

from twice.indexer.ray_reindex import reindex_on_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def drop_vectors(options, ids) -> None:
    """What a killed run leaves: catalog rows whose vectors never reached the saved index."""
    index = VectorIndex.load(options.index_path)
    index.remove(ids)
    index.save(options.index_path)


def test_ray_reindex_matches_the_single_machine_index_and_resumes(cluster, tmp_path, options, embedder):
    write_images(tmp_path / "in", 12)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    ids, single = VectorIndex.load(options.index_path).vectors()
    assert len(ids) == 12

    options.index_path.unlink()  # every row pending, as after a model change
    summary = reindex_on_ray(options, embedder, progress=False)
    assert (summary.embedded_pending, summary.vectors, sum(summary.skipped.values())) == (12, 12, 0)
    ray_ids, on_ray = VectorIndex.load(options.index_path, embedder.version, embedder.dim).vectors()
    np.testing.assert_array_equal(ray_ids, ids)
    np.testing.assert_allclose(on_ray, single, atol=1e-2)  # bf16 tolerance where a worker autocasts

    drop_vectors(options, ids[5:])  # a run killed after 5 images continues with the other 7
    again = reindex_on_ray(options, embedder, progress=False)
    assert (again.embedded_pending, again.vectors) == (7, 12)
    np.testing.assert_array_equal(VectorIndex.load(options.index_path).ids(), ids)


def test_ray_reindex_skips_and_counts_an_unreadable_stored_image(cluster, tmp_path, options, embedder):
    write_images(tmp_path / "in", 3)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    indexer = Indexer(options, embedder.version, embedder.dim)
    indexer.store.path(indexer.catalog.get_many([1])[1].stored_path).write_bytes(b"not an image")
    indexer.close()
    options.index_path.unlink()
    summary = reindex_on_ray(options, embedder, progress=False)
    assert summary.embedded_pending == 2 and sum(summary.skipped.values()) == 1
    assert VectorIndex.load(options.index_path).ids().tolist() == [2, 3]
