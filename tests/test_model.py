"""The embedder: weights loading order, checkpoints, versions, output, precision."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import make_options
from imagegen import make_image
from twice.augment import apply_transform
from twice.model import (
    CheckpointError,
    Embedder,
    build_network,
    load_checkpoint,
    save_checkpoint,
    seeded_network,
)
from twice.model.embedder import Preprocess, pick_precision
from twice.model.weights import SHIPPED_CHECKPOINT
from twice.model.whiten import fit_whitening


def test_embeddings_are_unit_vectors_of_the_configured_dimension(embedder):
    xb = embedder.embed_images([make_image(i) for i in range(3)])
    assert xb.shape == (3, 256) and xb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-5)


def test_same_pixels_give_the_same_vector(embedder):
    image = make_image(7)
    a, b = embedder.embed_images([image, image.copy()])
    assert float(a @ b) > 0.9999


def test_squash_preprocessing_commutes_with_rotation():
    image = make_image(8, (96, 72))
    preprocess = Preprocess(32)
    rotated = preprocess(image.transpose(Image.Transpose.ROTATE_270))  # 90° clockwise
    expected = torch.rot90(preprocess(image), k=-1, dims=(1, 2))
    torch.testing.assert_close(rotated, expected, atol=0.05, rtol=0)


DIHEDRAL = (
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def _dihedral_cosines(embedder: Embedder, image: Image.Image) -> np.ndarray:
    xb = embedder.embed_images([image, *(image.transpose(t) for t in DIHEDRAL)])
    return xb[1:] @ xb[0]


def test_d4_pooling_gives_every_turn_and_flip_the_same_embedding(embedder):
    assert embedder.net.invariance == "d4"
    assert _dihedral_cosines(embedder, make_image(11)).min() > 0.9999


def test_single_view_network_is_not_rotation_invariant(tmp_path):
    single = Embedder.from_options(make_options(tmp_path, invariance="none"))
    assert single.net.invariance == "none"
    assert _dihedral_cosines(single, make_image(11)).min() < 0.999  # random weights: all close to 1


def test_invariance_is_part_of_the_model_version(tmp_path, embedder):
    single = Embedder.from_options(make_options(tmp_path, invariance="none"))
    assert "-d4-" in embedder.version and "-none-" in single.version
    assert single.version != embedder.version


def test_unknown_invariance_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown invariance 'd8'"):
        Embedder.from_options(make_options(tmp_path, invariance="d8"))


def test_standardising_cancels_a_uniform_brightness_shift():
    array = (np.asarray(make_image(12), dtype=np.int16) * 0.5 + 40).astype(np.uint8)  # 40..167
    preprocess = Preprocess(32, black_point=False)
    shifted = preprocess(Image.fromarray(array + 60))  # no value reaches 255: nothing clips
    torch.testing.assert_close(shifted, preprocess(Image.fromarray(array)), atol=1e-4, rtol=0)


def test_black_point_leaves_an_image_with_black_in_every_channel_alone():
    array = np.asarray(make_image(13)).copy()
    array[0, 0] = 0
    image = Image.fromarray(array)
    torch.testing.assert_close(Preprocess(32)(image), Preprocess(32, black_point=False)(image))


def test_black_point_turns_a_clipped_brightening_into_the_original_with_its_top_cut():
    """Pale blue clip art on white (the blue channel is 255 everywhere, red and green hold the
    drawing): bright +100 squeezes red and green into 100..255. The stretch maps them back,
    values over 155 cut at white, as if the original's contrast had been raised."""
    array = np.asarray(make_image(14)).copy()
    array[..., 2] = 255
    array[:4, :48, :2] = 0  # a black-ish (blue) patch: red and green reach 0 (not a border to trim)
    copy = apply_transform(Image.fromarray(array), "bright")
    top_cut = np.clip(array.astype(np.float32) * 255 / 155, 0, 255).round().astype(np.uint8)
    expected = Preprocess(32, black_point=False)(Image.fromarray(top_cut))
    torch.testing.assert_close(Preprocess(32)(copy), expected, atol=0.03, rtol=0)
    assert (Preprocess(32, black_point=False)(copy) - expected).abs().max() > 0.15


def test_checkpoint_keeps_its_invariance_and_old_ones_load_as_single_view(tmp_path, embedder):
    path = save_checkpoint(embedder.net, tmp_path / "d4.pt", image_size=64)
    assert load_checkpoint(path, invariance="none")[0].invariance == "d4"  # the checkpoint's wins
    blob = torch.load(path, weights_only=True)
    del blob["invariance"]  # as written before the d4 pooling existed
    torch.save(blob, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].invariance == "none"


def test_checkpoint_round_trip_restores_the_same_embeddings(tmp_path, embedder):
    path = save_checkpoint(embedder.net, tmp_path / "ckpt.pt", image_size=64, meta={"steps": 3}, half=False)
    options = make_options(tmp_path, checkpoint=str(path))
    loaded = Embedder.from_options(options)
    assert loaded.weights.source == "checkpoint" and loaded.weights.meta == {"steps": 3}
    images = [make_image(i) for i in range(2)]
    np.testing.assert_allclose(loaded.embed_images(images), embedder.embed_images(images), atol=1e-5)
    assert loaded.version != embedder.version  # different weights source, different version


def test_fp16_checkpoint_keeps_quality(tmp_path, embedder):
    path = save_checkpoint(embedder.net, tmp_path / "half.pt", image_size=64)
    net, info = load_checkpoint(path)
    half = Embedder(net, info, 64, torch.device("cpu"))
    images = [make_image(i) for i in range(4)]
    cos = (half.embed_images(images) * embedder.embed_images(images)).sum(axis=1)
    assert cos.min() > 0.999


def test_torchvision_state_dict_loads_into_the_trunk(tmp_path):
    torch.manual_seed(3)
    vgg = torchvision.models.vgg16()
    path = tmp_path / "vgg16-local.pth"
    torch.save(vgg.state_dict(), path)
    net, info = build_network("vgg16", 128, checkpoint=path)
    torch.testing.assert_close(net.trunk[0].weight, vgg.features[0].weight)
    assert info.source == "checkpoint" and net.dim == 128


def test_cached_imagenet_weights_are_used(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.manual_seed(4)
    vgg = torchvision.models.vgg16()
    torch.save(vgg.state_dict(), hub / "checkpoints" / "vgg16-397923af.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    net, info = build_network("vgg16", 64, allow_download=False, use_shipped=False)
    assert info.source == "imagenet"
    torch.testing.assert_close(net.trunk[28].weight, vgg.features[28].weight)


def test_random_fallback_warns_loudly(caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="twice.model.weights"):
        _, info = build_network("vgg16", 64, allow_download=False, use_shipped=False)
    assert info.source == "random"
    assert "NO TRAINED WEIGHTS" in caplog.text and "--checkpoint" in caplog.text


def test_bad_checkpoints_are_refused_with_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nothere.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt: neither"):
        load_checkpoint(other)


def test_model_version_changes_with_input_size(tmp_path):
    small = Embedder.from_options(make_options(tmp_path, image_size=64))
    large = Embedder.from_options(make_options(tmp_path, image_size=96))
    assert small.version != large.version and "-s64-" in small.version


def test_precision_choice():
    cpu = torch.device("cpu")
    assert pick_precision(cpu, "fp32") == "fp32"
    assert pick_precision(cpu, "bf16") == "bf16"
    assert pick_precision(torch.device("cuda"), "auto") == "fp16"
    with pytest.raises(ValueError, match="precision must be"):
        pick_precision(cpu, "int4")


def test_bf16_autocast_keeps_embeddings_close(embedder):
    images = [make_image(i) for i in range(2)]
    bf16 = Embedder(embedder.net, embedder.weights, 64, torch.device("cpu"), torch.bfloat16)
    cos = (bf16.embed_images(images) * embedder.embed_images(images)).sum(axis=1)
    assert cos.min() > 0.99


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.exists(), reason="no checkpoint shipped in model/weights/ yet")
def test_shipped_checkpoint_loads_by_default_and_the_index_records_its_version(tmp_path):
    from imagegen import write_images
    from twice.indexer import VectorIndex, reindex

    options = make_options(tmp_path, shipped_checkpoint=True, image_size=128)
    embedder = Embedder.from_options(options)
    assert embedder.weights.source == "shipped" and "-shipped-" in embedder.version
    assert embedder.weights.meta["trained_by"] == "twice train" and embedder.net.invariance == "none"
    assert embedder.weights.image_size == 96 and embedder.shipped_thresholds is not None
    assert embedder.image_size == embedder.weights.image_size  # the checkpoint's own size wins
    write_images(tmp_path / "in", 3)
    reindex([tmp_path / "in"], options, embedder, progress=False)
    assert VectorIndex.load(options.index_path).model_version == embedder.version


# whitening ------------------------------------------------------------------------------------


def test_fitted_whitening_makes_the_covariance_the_identity():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8)) * np.geomspace(1.0, 0.01, 8)  # very unequal variances
    x = rng.normal(size=(4000, 8)) @ mixing.T + rng.normal(size=8)
    mean, projection = fit_whitening(x, shrinkage=0.0)
    white = (x - mean) @ projection
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(8), atol=1e-3)
    with pytest.raises(ValueError, match="needs at least 16 images, got 15"):
        fit_whitening(x[:15])


def test_the_nets_whitening_matches_the_formula_and_travels_in_the_checkpoint(tmp_path):
    net = seeded_network("vgg16", 16, "none")
    plain = Embedder(
        net, load_checkpoint(save_checkpoint(net, tmp_path / "plain.pt", 32))[1], 32, torch.device("cpu")
    )
    images = [make_image(i) for i in range(6)]
    raw = plain.embed_images(images)
    rng = np.random.default_rng(1)
    mean, projection = fit_whitening(rng.normal(size=(64, 16)))
    net.whitening.set(torch.from_numpy(mean), torch.from_numpy(projection))
    expected = (raw - mean) @ projection
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(plain.embed_images(images), expected, atol=1e-4)

    path = save_checkpoint(net, tmp_path / "white.pt", 32)  # fp16 weights, fp32 whitening
    loaded, info = load_checkpoint(path)
    assert loaded.whitening.fitted and loaded.whitening.projection.dtype == torch.float32
    torch.testing.assert_close(loaded.whitening.projection, torch.from_numpy(projection))
    whitened = Embedder(loaded, info, 32, torch.device("cpu"))
    assert whitened.version != plain.version
    # A checkpoint written before the whitening existed loads with the identity.
    blob = torch.load(path, weights_only=True)
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if not k.startswith("whitening.")}
    torch.save(blob, tmp_path / "old.pt")
    assert not load_checkpoint(tmp_path / "old.pt")[0].whitening.fitted
