"""Options: environment round trip and clear refusals."""

from __future__ import annotations

import pytest

from twice.options import Options


def test_env_round_trip_reproduces_the_options():
    options = Options().with_overrides(
        data_dir="/tmp/twice-x", image_size=64, allow_download=False, checkpoint_seconds=0.5
    )
    env = options.to_env()
    assert env["TWICE_ALLOW_DOWNLOAD"] == "0" and env["TWICE_IMAGE_SIZE"] == "64"
    assert Options.from_env(env) == options


def test_unreadable_values_are_refused_with_the_name():
    with pytest.raises(ValueError, match="image_size: cannot read 'big' as int"):
        Options.from_env({"TWICE_IMAGE_SIZE": "big"})
    with pytest.raises(ValueError, match="allow_download"):
        Options.from_env({"TWICE_ALLOW_DOWNLOAD": "maybe"})
