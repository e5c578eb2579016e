"""GPU twins of the CPU paths; skipped cleanly on machines without a GPU (CI has none)."""

from __future__ import annotations

import io

import faiss
import numpy as np
import pytest
import torch

from conftest import make_options
from imagegen import make_image, write_images
from twice.imageio import decode_image
from twice.indexer import VectorIndex, reindex
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


def jpeg_bytes(seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    out = io.BytesIO()
    make_image(seed).resize(size).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_tensor_preprocess_matches_the_pil_preprocess_on_cpu(embedder):
    """The device path's maths, run on the CPU: the same vectors as the PIL path, to rounding."""
    encoded = [jpeg_bytes(i) for i in range(4)]
    on_cpu = embedder.embed_images(
        [decode_image(data, draft_side=embedder.draft_side).image for data in encoded]
    )
    tensors = embedder.preprocess_encoded(encoded)  # on the CPU embedder: the device path's maths
    assert tensors.shape == (4, 3, embedder.image_size, embedder.image_size)
    cos = (embedder.embed_tensors(tensors) * on_cpu).sum(axis=1)
    assert cos.min() > 0.99


@needs_cuda
def test_jpegs_decoded_on_the_gpu_embed_as_on_the_cpu(embedder):
    cuda = Embedder(embedder.net, embedder.weights, embedder.image_size, torch.device("cuda"), None)
    try:
        assert cuda.decodes_on_device
        encoded = [jpeg_bytes(i) for i in range(6)]
        on_gpu = cuda.embed_tensors(encoded)  # bytes: nvJPEG decodes them on the device
        on_cpu = embedder.embed_tensors(embedder.preprocess_encoded(encoded))
        assert (on_gpu * on_cpu).sum(axis=1).min() > 0.999
    finally:
        embedder.net.to("cpu")


@needs_cuda
def test_reindex_on_cuda_decodes_jpegs_on_the_device_and_matches_the_cpu_index(tmp_path, embedder):
    folder = tmp_path / "in"
    write_images(folder, 40, fmt="JPEG")
    cpu_options = make_options(tmp_path / "cpu", workers=1, batch_size=16)
    reindex([folder], cpu_options, embedder, progress=False)
    cuda = Embedder(embedder.net, embedder.weights, embedder.image_size, torch.device("cuda"), torch.float16)
    try:
        gpu_options = make_options(tmp_path / "gpu", workers=1, batch_size=16, device="cuda")
        summary = reindex([folder], gpu_options, cuda, progress=False)
    finally:
        embedder.net.to("cpu")
    assert summary.added == 40
    cpu_ids, cpu_xb = VectorIndex.load(cpu_options.index_path).vectors()
    gpu_ids, gpu_xb = VectorIndex.load(gpu_options.index_path).vectors()
    np.testing.assert_array_equal(cpu_ids, gpu_ids)
    assert (cpu_xb * gpu_xb).sum(axis=1).min() > 0.99
