"""``twice serve``: the search service (api.py) under gunicorn, and the settings gunicorn.conf.py uses.

Each worker process loads one model and one index (after the fork, so nothing heavy is shared
by accident) and answers requests from a few threads. ``kill -HUP <master pid>`` reloads
gracefully: new workers start, old ones finish their requests and exit. A finished
``twice reindex`` needs no reload at all: workers pick up the new index file by themselves.

It listens on ``bind`` (one address for every route), or on ``inference_address`` and
``management_address`` apart (``twice.web.listeners``), and refuses to start when writes would
be open to the network without a token (``twice.web.auth.refuse_open_writes``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn.app.base import BaseApplication

from twice.options import Options
from twice.web.auth import refuse_open_writes
from twice.web.listeners import listeners

LOG = logging.getLogger(__name__)


def default_web_workers(cores: int | None = None) -> int:
    """Worker processes: each holds a model and runs it on several cores, so about cores/4, 1..4."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // 4))


def default_threads(cores: int | None = None) -> int:
    """Threads per worker: requests spend time in I/O and FAISS as well as in the network."""
    cores = cores or os.cpu_count() or 1
    return max(2, min(8, cores))


def with_bind(options: Options, host: str | None, port: int | None) -> Options:
    """``options`` listening on ``host``:``port`` (each None: as ``options.bind`` says)."""
    if host is None and port is None:
        return options
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
    old_host, _, old_port = options.bind.rpartition(":")
    host = old_host.strip("[]") if host is None else host
    port = int(old_port) if port is None else port
    return options.with_overrides(bind=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def gunicorn_settings(
    options: Options,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    log_dir: str | Path | None = None,
) -> dict:
    """gunicorn settings for the service; ``log_dir='-'`` logs to stderr instead of files.

    ``host`` and ``port`` replace those of ``options.bind``; with ``inference_address`` and
    ``management_address`` set, gunicorn listens on both.
    """
    options = with_bind(options, host, port)
    binds = [ear.bind for ear in listeners(options)]
    workers = default_web_workers() if workers is None else workers
    threads = default_threads() if threads is None else threads
    for name, value in (("workers", workers), ("threads", threads)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if log_dir is None:
        log_dir = Path(options.data_dir) / "logs"
    if str(log_dir) == "-":
        access_log, error_log, pidfile, control = "-", "-", None, None
    else:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        access_log, error_log = str(log_dir / "access.log"), str(log_dir / "error.log")
        pidfile, control = str(log_dir / "gunicorn.pid"), str(log_dir / "gunicorn.ctl")
    return supported_settings(
        {
            "bind": binds,
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            # The first request of a worker may wait for the model: generous worker timeout.
            "timeout": 120,
            "graceful_timeout": 30,
            "keepalive": 5,
            "accesslog": access_log,
            "errorlog": error_log,
            "loglevel": "info",
            "pidfile": pidfile,
            "proc_name": "twice",
            "preload_app": False,  # one model per worker, loaded after the fork
            "post_fork": post_fork,
            "post_worker_init": post_worker_init,
            # gunicorn >= 24 opens a control socket, by default one path per user: two servers
            # would share it. Keep it beside the logs, or off when logging to stderr.
            "control_socket": control,
            "control_socket_disable": control is None,
        }
    )


def supported_settings(settings: dict) -> dict:
    """Drop unset values and settings this gunicorn does not know (pyproject allows >= 22)."""
    from gunicorn.config import KNOWN_SETTINGS

    known = {setting.name for setting in KNOWN_SETTINGS}
    return {name: value for name, value in settings.items() if name in known and value is not None}


def settings_from_env(environ: dict[str, str] | None = None) -> dict:
    """Settings for ``gunicorn api:app`` from ``TWICE_*`` variables (used by gunicorn.conf.py).

    ``TWICE_BIND`` (host:port, default 127.0.0.1:8000) or ``TWICE_INFERENCE_ADDRESS`` and
    ``TWICE_MANAGEMENT_ADDRESS`` (also from a ``TWICE_CONFIG`` file), ``TWICE_WEB_WORKERS``,
    ``TWICE_WEB_THREADS``, ``TWICE_LOG_DIR`` (default <data_dir>/logs, ``-`` for stderr).
    Raises ``ExposedWrites`` where writes would be open to the network without a token.
    """
    environ = os.environ if environ is None else environ
    options = Options.from_env(environ)
    refuse_open_writes(options)
    return gunicorn_settings(
        options,
        workers=_env_int(environ, "TWICE_WEB_WORKERS"),
        threads=_env_int(environ, "TWICE_WEB_THREADS"),
        log_dir=environ.get("TWICE_LOG_DIR") or None,
    )


def _env_int(environ, name: str) -> int | None:
    raw = environ.get(name)
    if not raw:
        return None
    if not raw.strip().isdecimal():
        raise ValueError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def prepare_multiprocess_dir(workers: int, log_dir: str | None) -> str | None:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder when several workers count requests
    (in the gunicorn master, before any worker imports prometheus_client); returns the folder."""
    if workers < 2:
        return None
    if log_dir is None or log_dir == "-":
        folder = Path(tempfile.mkdtemp(prefix="twice-metrics-"))
    else:
        folder = Path(log_dir) / "metrics"
        shutil.rmtree(folder, ignore_errors=True)  # counts of an earlier run would be added in
        folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return str(folder)


def log_dir_of(settings: dict) -> str | None:
    """The folder of the access log, or ``-`` for stderr."""
    log = settings.get("accesslog")
    return "-" if log in (None, "-") else str(Path(log).parent)


# gunicorn hooks ------------------------------------------------------------------------------


def post_fork(server, worker) -> None:
    """Share the cores between workers: torch would otherwise give every worker all of them."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, server.cfg.workers)))


def post_worker_init(worker) -> None:
    """Load the model and index before the worker takes requests."""
    from twice.web import app as api

    try:
        api.warm_up(worker.wsgi)
    except Exception:  # the service answers 503 and retries on the next request
        worker.log.exception("twice: warm-up failed")


class ServeApplication(BaseApplication):
    """gunicorn running ``api.create_app(options)`` in each worker."""

    def __init__(self, options: Options, settings: dict, allow_private_urls: bool) -> None:
        self.options, self.settings, self.allow_private_urls = options, settings, allow_private_urls
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self):
        from twice.web import app as api  # in the worker, after the fork

        return api.create_app(self.options, allow_private_urls=self.allow_private_urls)
