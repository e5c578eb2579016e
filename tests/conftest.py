"""Shared fixtures: small real models, real SQLite files in tmp dirs, real images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from twice.model import Embedder
from twice.options import Options

ROOT = Path(__file__).resolve().parents[1]

# 64 px keeps the real VGG-16 code path fast enough for the suite.
TEST_IMAGE_SIZE = 64
# Tests build their own networks (seeded random, or checkpoints they write): the checkpoint
# shipped in model/weights/ is tested on purpose where a test asks for it, and CLI runs in
# the tests (which read TWICE_* from the environment) must not pick it up either.
os.environ["TWICE_SHIPPED_CHECKPOINT"] = "0"


def make_options(data_dir: Path, **overrides) -> Options:
    base = Options(
        data_dir=data_dir,
        image_size=TEST_IMAGE_SIZE,
        batch_size=8,
        workers=0,
        allow_download=False,
        shipped_checkpoint=False,
        device="cpu",
        checkpoint_seconds=0.0,
    )
    return base.with_overrides(**overrides)


@pytest.fixture
def options(tmp_path: Path) -> Options:
    return make_options(tmp_path / "data")


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    logging.getLogger("twice.model.weights").setLevel(logging.ERROR)
    return Embedder.from_options(make_options(Path("unused")))
