"""GPU twins of the CPU paths; skipped cleanly on machines without a GPU (CI has none)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from imagegen import make_image
from twice.indexer import VectorIndex
from twice.model import Embedder

needs_faiss_gpu = pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="FAISS sees no GPU")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


@needs_faiss_gpu
@pytest.mark.parametrize("flat_limit", [10_000, 500])
def test_gpu_search_matches_cpu_search(flat_limit):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((2000, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = VectorIndex("m", 32, flat_limit=flat_limit, nprobe=4096)
    index.add(np.arange(2000) + 10, xb)
    _, cpu_ids = index.search(xb[:20], 5)
    assert index.to_gpu()
    _, gpu_ids = index.search(xb[:20], 5)
    np.testing.assert_array_equal(gpu_ids[:, 0], cpu_ids[:, 0])


@needs_cuda
def test_cuda_embeddings_match_cpu(embedder):
    images = [make_image(i) for i in range(4)]
    cuda = Embedder(embedder.net, embedder.weights, embedder.image_size, torch.device("cuda"), None)
    cos = (cuda.embed_images(images) * embedder.embed_images(images)).sum(axis=1)
    embedder.net.to("cpu")
    assert cos.min() > 0.999
