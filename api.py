"""``gunicorn api:app`` from a checkout: the web application lives in ``twice.web.app``.

Installed, use ``gunicorn twice.web.app:app`` or ``twice serve``. The app is built on first
access, so importing this module stays cheap.
"""

from twice.web import app as _web


def __getattr__(name: str):
    return getattr(_web, name)
