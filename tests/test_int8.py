"""int8 inference (ONNX Runtime): the choice by CPU flags, agreement with fp32, the cached file."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_options
from imagegen import make_image
from twice.model import Embedder
from twice.model.embedder import pick_precision
from twice.model.int8 import SHIPPED_SETTINGS, cached_path, calibration_images
from twice.model.weights import SHIPPED_CHECKPOINT

CPU = torch.device("cpu")
EPYC = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
ALDER_LAKE = frozenset({"avx2", "avx_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"})
OLD_AVX512 = frozenset({"avx2", "avx512f"})
# Few calibration images keep the test fast; the shipped settings use more.
TEST_SETTINGS = replace(SHIPPED_SETTINGS, images=24)


@pytest.mark.parametrize(
    "flags, expected",
    [(EPYC, "int8"), (ALDER_LAKE, "int8"), (SAPPHIRE_RAPIDS, "int8"), (OLD_AVX512, "fp32")],
)
def test_auto_picks_int8_where_the_cpu_has_vnni(flags, expected):
    assert pick_precision(CPU, "auto", flags, int8_missing=None) == expected


def test_auto_without_onnxruntime_falls_back_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="twice.model.embedder"):
        assert pick_precision(CPU, "auto", EPYC, int8_missing="onnxruntime is not installed") == "bf16"
    assert "not int8: onnxruntime is not installed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="twice.model.embedder"):
        assert pick_precision(CPU, "auto", frozenset({"avx2", "avx512_bf16"}), int8_missing=None) == "bf16"
    assert "no VNNI" in caplog.text


def test_int8_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="int8 needs ONNX Runtime: onnx is not installed"):
        pick_precision(CPU, "int8", EPYC, int8_missing="onnx is not installed")
    with pytest.raises(ValueError, match="int8 runs on the CPU only, not on cuda"):
        pick_precision(torch.device("cuda"), "int8", EPYC, int8_missing=None)
    assert pick_precision(torch.device("cuda"), "auto", EPYC, int8_missing=None) == "fp16"


def test_calibration_images_are_the_same_on_every_run():
    first, again = calibration_images(6), calibration_images(6)
    assert len(first) == 6
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))


needs_shipped = pytest.mark.skipif(not SHIPPED_CHECKPOINT.exists(), reason="no checkpoint in model/weights/")


@pytest.fixture(scope="module")
def int8_options(tmp_path_factory):
    return make_options(tmp_path_factory.mktemp("int8"), shipped_checkpoint=True, precision="fp32")


@pytest.fixture(scope="module")
def pair(int8_options):
    """The shipped model in fp32 and in int8 (quantised into the options' data directory)."""
    fp32 = Embedder.from_options(int8_options)
    int8 = Embedder.from_options(int8_options)
    int8.use_int8(int8_options.models_dir, TEST_SETTINGS)
    return fp32, int8


@needs_shipped
def test_int8_embeddings_agree_with_fp32(pair):
    fp32, int8 = pair
    images = [make_image(100 + i, (160, 120)) for i in range(24)]
    cos = (fp32.embed_images(images, batch_size=8) * int8.embed_images(images, batch_size=8)).sum(axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.99, cos


@needs_shipped
def test_the_description_names_int8_and_the_version_stays_fp32s(pair):
    fp32, int8 = pair
    assert (fp32.describe()["precision"], int8.describe()["precision"]) == ("fp32", "int8")
    assert int8.version == fp32.version  # compatible vectors: docs/model-card.md#precision


@needs_shipped
def test_a_second_embedder_loads_the_cached_file_without_quantising(pair, int8_options, caplog):
    _, first = pair
    path = cached_path(int8_options.models_dir, first.version, TEST_SETTINGS)
    written = path.stat().st_mtime_ns
    again = Embedder.from_options(int8_options)
    with caplog.at_level(logging.INFO, logger="twice.model.int8"):
        again.use_int8(int8_options.models_dir, TEST_SETTINGS)
    assert "quantising" not in caplog.text and path.stat().st_mtime_ns == written
    assert again.int8.path == path
    images = [make_image(7), make_image(8)]
    np.testing.assert_allclose(again.embed_images(images), first.embed_images(images), atol=1e-6)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


@needs_shipped
def test_bench_speed_times_the_int8_network_where_the_embedder_runs_it(pair):
    from bench.speed import SpeedConfig, measure_int8_forward

    fp32, int8 = pair
    config = SpeedConfig.quick_config(batch_sizes=(2,))
    rows = measure_int8_forward(int8, config)
    assert [(r["setting"], r["batch"]) for r in rows] == [("int8 (ONNX Runtime)", 2)]
    assert rows[0]["images_per_s"] > 0
    assert measure_int8_forward(fp32, config) == []
    assert config.notes[-1].startswith("int8 not measured: the embedder runs fp32")


@needs_shipped
def test_precision_int8_in_the_options_runs_the_cached_network(pair, int8_options, caplog):
    _, first = pair
    shipped = cached_path(int8_options.models_dir, first.version)
    # The test settings' file stands in for the shipped settings' (quantising those takes minutes).
    shutil.copyfile(first.int8.path, shipped)
    with caplog.at_level(logging.INFO, logger="twice.model.int8"):
        embedder = Embedder.from_options(int8_options.with_overrides(precision="int8"))
    assert "quantising" not in caplog.text and embedder.int8.path == shipped
    assert (embedder.precision, embedder.version) == ("int8", first.version)
    image = [make_image(9)]
    np.testing.assert_allclose(embedder.embed_images(image), first.embed_images(image), atol=1e-6)
