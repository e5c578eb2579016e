"""gunicorn settings for ``gunicorn api:app`` (gunicorn reads ./gunicorn.conf.py by itself).

As the original system ran its server: access and error logs to files, worker and thread
counts from the machine's cores, gthread workers, graceful reload with ``kill -HUP <pid>``
(the pid is in the log folder). Everything comes from the environment:

    TWICE_BIND=127.0.0.1:8000   TWICE_WEB_WORKERS=2   TWICE_WEB_THREADS=4
    TWICE_LOG_DIR=index_data/logs ('-' for stderr)   TWICE_DATA_DIR, TWICE_CHECKPOINT, ...
    TWICE_INFERENCE_ADDRESS / TWICE_MANAGEMENT_ADDRESS (or TWICE_CONFIG=config.properties)

Writes open to the network without a token stop it here, with a message saying how to fix it.
``twice serve`` uses the same settings (twice/web/serve.py) with command-line flags instead.
"""

import sys

from twice.web.auth import ExposedWrites
from twice.web.serve import log_dir_of, prepare_multiprocess_dir, settings_from_env

try:
    _settings = settings_from_env()
except (ExposedWrites, ValueError) as exc:
    sys.exit(f"twice: {exc}")
prepare_multiprocess_dir(_settings["workers"], log_dir_of(_settings))
globals().update(_settings)
