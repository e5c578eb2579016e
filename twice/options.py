"""One options object for every entry point, read from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

ENV_PREFIX = "TWICE_"


def default_workers() -> int:
    """Decode workers: leave one core to the network, never fewer than one."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class Options:
    """Where state lives and how the model and index behave.

    Every field can be set from the environment as ``TWICE_<NAME>`` (upper case), and the
    CLI overrides the environment.
    """

    data_dir: Path = Path("index_data")
    db_url: str = ""  # empty: sqlite file inside data_dir
    checkpoint: str = ""  # empty: shipped checkpoint, then ImageNet weights, then random
    shipped_checkpoint: bool = True  # False: skip model/weights/ (ImageNet weights, then random)
    arch: str = "vgg16"
    embed_dim: int = 256
    image_size: int = 128  # a shipped or given checkpoint brings its own size
    invariance: str = (
        "d4"  # d4: pool over the 8 quarter turns/flips; none: one view (checkpoints bring theirs)
    )
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    allow_download: bool = True  # try torchvision's weight download when not cached
    max_image_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 80_000_000
    flat_limit: int = 200_000  # above this many vectors the index becomes approximate
    # reindex folds its vector log into the index file at least this often (every batch is
    # durable in the log at once; the fold only bounds the log's length)
    checkpoint_seconds: float = 300.0
    allow_private_urls: bool = False  # let URL fetches reach loopback/private networks (tests, intranets)
    fetch_timeout: float = 10.0  # seconds, for URL fetches by the API

    @property
    def catalog_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'catalog.sqlite'}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index" / "vectors.twice"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    def with_overrides(self, **values: object) -> Options:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        given = {k: v for k, v in values.items() if v is not None}
        return replace(self, **{k: _coerce(self, k, v) for k, v in given.items()})

    def to_env(self) -> dict[str, str]:
        """``TWICE_*`` variables that make a child twice process see exactly these options."""
        return {ENV_PREFIX + f.name.upper(): _env_text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Options:
        environ = os.environ if environ is None else environ
        base = cls()
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        return base.with_overrides(**values)


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _coerce(options: Options, name: str, value: object) -> object:
    current = getattr(options, name)
    if not isinstance(value, str):
        return Path(value) if isinstance(current, Path) else value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(current, Path):
            return Path(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        raise ValueError(f"option {name}: cannot read {value!r} as {type(current).__name__}") from None
    return value
