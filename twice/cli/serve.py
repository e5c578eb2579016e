"""``twice serve``: the search service under gunicorn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from twice.options import Options
from twice.web.serve import DEFAULT_HOST, DEFAULT_PORT, ServeApplication, gunicorn_settings

from .commands import help_for

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help=help_for("serve"),
        description="Serve POST /search, POST /images, GET /images/<id>, /health, /stats,"
        " /openapi.json and the web page at / with gunicorn. Workers pick up a finished"
        " `twice reindex` without a restart; `kill -HUP <pid>` reloads gracefully.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
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


def run_serve(args, options: Options) -> int:
    settings = gunicorn_settings(options, args.host, args.port, args.workers, args.threads, args.log_dir)
    allow_private = args.allow_private_urls or options.allow_private_urls
    if not Path(options.index_path).exists():
        LOG.warning(
            "no index at %s yet: searches answer 503 until `twice reindex` or POST /images",
            options.index_path,
        )
    where = "stderr" if settings["accesslog"] == "-" else str(Path(settings["accesslog"]).parent)
    print(
        f"twice: serving {options.data_dir} on http://{args.host}:{args.port}/ with"
        f" {settings['workers']} worker(s) x {settings['threads']} threads; logs: {where}",
        file=sys.stderr,
        flush=True,
    )
    ServeApplication(options, settings, allow_private).run()
    return 0
