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
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 (CPU, ONNX Runtime; auto: where it has VNNI)
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
    # The web service (docs/service.md#security). A config file (TWICE_CONFIG, key=value lines
    # as TorchServe's config.properties) may set any of these by field name.
    config: str = ""  # key=value file read before the environment; empty: none
    bind: str = "127.0.0.1:8000"  # host:port of the one listener, unless the two addresses below are set
    inference_address: str = ""  # http://host:port for search and the page (empty: bind)
    management_address: str = ""  # http://host:port for writes, /stats, /metrics (empty: inference's)
    api_token: str = ""  # one admin token for the simple case (else `twice token create`)
    token_file: str = ""  # hashed tokens with names and roles; empty: <data_dir>/tokens.json
    read_only: bool = False  # refuse every write: POST /images, DELETE /images/<id>
    private_reads: bool = False  # reads need a token too (any role); /health and the page stay open
    allowed_hosts: str = ""  # Host names served, comma-separated; empty: loopback and the listen hosts
    allowed_origins: str = ""  # browser origins allowed cross-origin (CORS and writes); empty: none
    expose_paths: str = "auto"  # server file paths in answers: auto (only on loopback) | yes | no
    max_json_bytes: int = 1024 * 1024  # JSON request bodies; image uploads have max_image_bytes
    search_rate: str = "120/minute"  # POST /search per client per worker; "" for no limit
    images_rate: str = "600/minute"  # requests to /images... per client per worker; "" for no limit
    max_searches: int = 4  # searches at once per worker; more answer 503 with Retry-After
    proxy_hops: int = 0  # reverse proxies in front whose X-Forwarded-For names the client
    verify_top: int = 5  # search verifies this many top candidates by local features (0: off)
    part_views: bool = True  # a query left without a duplicate is searched again as a crop
    report_loners: int = 2000  # images in no duplicate pair the report searches by their views, at most

    @property
    def tokens_path(self) -> Path:
        return Path(self.token_file) if self.token_file else self.data_dir / "tokens.json"

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
        config = environ.get(ENV_PREFIX + "CONFIG")
        values: dict[str, object] = read_config(Path(config)) if config else {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        return base.with_overrides(**values)


# TorchServe's config.properties keys that twice reads as they are (the rest are its own).
CONFIG_KEYS = ("inference_address", "management_address")


def read_config(path: Path) -> dict[str, str]:
    """``key=value`` (or ``key: value``) lines of an options file; ``#`` and ``!`` start comments.

    Keys are option names (``api_token``, ``allowed_hosts``, ...), the ``TWICE_*`` variable
    names, or TorchServe's ``inference_address`` and ``management_address``.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from None
    names = {f.name for f in fields(Options)} - {"config"}
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=" if "=" in line else ":")
        key = key.strip().lower().removeprefix(ENV_PREFIX.lower())
        if not sep or key not in names:
            raise ValueError(
                f"config file {path}, line {number}: {line!r} is not key=value with a known key"
                f" (one of {', '.join(sorted(names))})"
            )
        values[key] = value.strip()
    return values


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
