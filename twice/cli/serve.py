"""``twice serve``: the search service under gunicorn."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from twice.options import Options
from twice.web.auth import refuse_open_writes
from twice.web.listeners import listeners
from twice.web.serve import (
    ServeApplication,
    gunicorn_settings,
    log_dir_of,
    prepare_multiprocess_dir,
    with_bind,
)

from .commands import help_for

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help=help_for("serve"),
        description="Serve POST /search, POST /images, GET /images/<id>, /health, /stats, /metrics,"
        " /openapi.json and the web page at / with gunicorn. Workers pick up a finished"
        " `twice reindex` without a restart; `kill -HUP <pid>` reloads gracefully. Writes need a"
        " token (`twice token create`); without one, only loopback may serve them.",
    )
    p.add_argument("--host", help="address to listen on (default: TWICE_BIND's, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: TWICE_BIND's, else 8000)")
    p.add_argument(
        "--config",
        help="key=value options file, e.g. inference_address=http://0.0.0.0:8080 and"
        " management_address=http://127.0.0.1:8081 (env TWICE_CONFIG)",
    )
    p.add_argument("--read-only", action="store_true", help="refuse every write (env TWICE_READ_ONLY)")
    p.add_argument("--workers", type=int, help="worker processes, each with its own model (default: cores/4)")
    p.add_argument("--threads", type=int, help="threads per worker (default: cores, 2..8)")
    p.add_argument(
        "--log-dir",
        help="folder for access.log, error.log and gunicorn.pid (default DATA_DIR/logs; '-' for stderr)",
    )
    p.add_argument(
        "--allow-private-urls",
        action="store_true",
        help='let {"url": ...} fetch from loopback and private addresses (env TWICE_ALLOW_PRIVATE_URLS)',
    )
    p.set_defaults(func=run_serve)


def with_config(options: Options, args) -> Options:
    """``options`` with the ``--config`` file under the environment and the command line."""
    if not args.config:
        return options
    from_file = Options.from_env({**os.environ, "TWICE_CONFIG": args.config})
    return from_file.with_overrides(data_dir=args.data_dir, checkpoint=args.checkpoint, device=args.device)


def run_serve(args, options: Options) -> int:
    options = with_config(options, args)
    options = with_bind(options, args.host, args.port).with_overrides(read_only=args.read_only or None)
    refuse_open_writes(options)
    settings = gunicorn_settings(options, workers=args.workers, threads=args.threads, log_dir=args.log_dir)
    allow_private = args.allow_private_urls or options.allow_private_urls
    if not Path(options.index_path).exists():
        LOG.warning(
            "no index at %s yet: searches answer 503 until `twice reindex` or POST /images",
            options.index_path,
        )
    prepare_multiprocess_dir(settings["workers"], log_dir_of(settings))
    where = log_dir_of(settings)
    addresses = ", ".join(
        f"http://{ear.bind}/ ({' and '.join(sorted(ear.roles))})" for ear in listeners(options)
    )
    print(
        f"twice: serving {options.data_dir} on {addresses} with {settings['workers']} worker(s)"
        f" x {settings['threads']} threads; logs: {'stderr' if where == '-' else where}",
        file=sys.stderr,
        flush=True,
    )
    ServeApplication(options, settings, allow_private).run()
    return 0
