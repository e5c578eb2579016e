"""Brings a catalog database to the schema of this code through the Alembic migrations in
``indexer/migrations`` (no alembic.ini: the configuration is built here).

``Catalog`` calls ``upgrade_schema`` on open. A database already at ``HEAD_REVISION`` costs
one query and never imports Alembic; otherwise the upgrade runs under the database's write
lock, so processes opening one new catalog together migrate it once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

LOG = logging.getLogger(__name__)

# The newest revision in migrations/versions (tests/test_migrations.py checks it is Alembic's head).
HEAD_REVISION = "0003"
MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key that serialises migrations on PostgreSQL ("twice" in ASCII).
PG_LOCK_KEY = 0x7477696365


def stored_revision(engine: Engine) -> str | None:
    """The database's Alembic revision; None where it has none (new, or written before migrations)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):  # no alembic_version table (or locked: the slow path waits)
        return None


def upgrade_schema(engine: Engine) -> None:
    """Create every table, or upgrade them to ``HEAD_REVISION``; one query when already there."""
    if stored_revision(engine) == HEAD_REVISION:
        return
    _upgrade(engine)


def alembic_config(connection: Connection | None = None):
    """An Alembic ``Config`` for the migrations package; ``connection`` is the one they run on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _lock(connection: Connection) -> None:
    """Take the database's write lock for the rest of this transaction."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})


def _upgrade(engine: Engine) -> None:
    from alembic import command
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    with engine.connect() as connection:
        _lock(connection)
        current = MigrationContext.configure(connection).get_current_revision()
        if current == HEAD_REVISION:  # another process migrated it while this one waited
            connection.rollback()
            return
        config = alembic_config(connection)
        try:
            ScriptDirectory.from_config(config).get_revisions(current)
        except CommandError as exc:
            raise RuntimeError(
                f"catalog {engine.url!r}: schema revision {current!r} is not one this twice knows "
                f"(newest {HEAD_REVISION!r}); it was written by a newer twice"
            ) from exc
        LOG.debug("catalog %r: schema %s -> %s", engine.url, current, HEAD_REVISION)
        command.upgrade(config, "head")
        connection.commit()
