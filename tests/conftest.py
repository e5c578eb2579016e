"""Shared fixtures: small real models, real SQLite files in tmp dirs, a real PostgreSQL server
(started once per session, a database per test), real images."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from pg import PostgresServer, postgres_bin, server_user, stop_orphans

from twice.model import Embedder
from twice.model.embedder import pick_precision
from twice.options import Options

ROOT = Path(__file__).resolve().parents[1]

# 64 px keeps the real VGG-16 code path fast enough for the suite.
TEST_IMAGE_SIZE = 64
# The catalog backends that tests parametrised over them run on, in turn.
BACKENDS = ("sqlite", "postgresql")
# Tests build their own networks (seeded random, or checkpoints they write): the checkpoint
# shipped in model/weights/ is tested on purpose where a test asks for it, and CLI runs in
# the tests (which read TWICE_* from the environment) must not pick it up either.
os.environ["TWICE_SHIPPED_CHECKPOINT"] = "0"
# Tests build small networks of their own in many data directories; quantising each for int8
# would take a minute a directory, so they run in the precision ``auto`` picks short of int8
# (bf16 or fp32); tests/test_int8.py tests int8.
TEST_PRECISION = pick_precision(torch.device("cpu"), "auto", int8_missing="tests run their own networks")
os.environ["TWICE_PRECISION"] = TEST_PRECISION


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
        precision=TEST_PRECISION,
    )
    return base.with_overrides(**overrides)


@pytest.fixture
def options(tmp_path: Path) -> Options:
    return make_options(tmp_path / "data")


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    logging.getLogger("twice.model.weights").setLevel(logging.ERROR)
    return Embedder.from_options(make_options(Path("unused")))


# catalogs -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (Debian's binaries; skips when they are missing)."""
    bin_dir, user = postgres_bin(), server_user()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
        )
    if user is None:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
    stop_orphans(bin_dir, user)  # servers of earlier runs that were killed mid-way
    server = PostgresServer(bin_dir, user)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty PostgreSQL database of this test's own."""
    return postgres_server.new_database()


@pytest.fixture(params=BACKENDS)
def new_db_url(request) -> Callable[[], str]:
    """Makes empty catalogs of one backend per run of the test: ``Options.db_url`` values,
    "" for SQLite (the embedded default, a file in the data dir) or a new PostgreSQL database."""
    if request.param == "sqlite":
        return lambda: ""
    return request.getfixturevalue("postgres_server").new_database


@pytest.fixture
def db_url(new_db_url: Callable[[], str]) -> str:
    """``Options.db_url`` of an empty catalog, on each backend in turn."""
    return new_db_url()


@pytest.fixture
def catalog_url(db_url: str, tmp_path: Path) -> str:
    """The URL of an empty catalog, on each backend in turn (SQLite: a file in ``tmp_path``)."""
    return db_url or f"sqlite:///{tmp_path / 'catalog.sqlite'}"
