"""gunicorn settings for ``gunicorn api:app`` (gunicorn reads ./gunicorn.conf.py by itself).

As the original system ran its server: access and error logs to files, worker and thread
counts from the machine's cores, gthread workers, graceful reload with ``kill -HUP <pid>``
(the pid is in the log folder). Everything comes from the environment:

    TWICE_BIND=127.0.0.1:8000   TWICE_WEB_WORKERS=2   TWICE_WEB_THREADS=4
    TWICE_LOG_DIR=index_data/logs ('-' for stderr)   TWICE_DATA_DIR, TWICE_CHECKPOINT, ...

``twice serve`` uses the same settings (twice/web/serve.py) with command-line flags instead.
"""

from twice.web.serve import settings_from_env

globals().update(settings_from_env())
