"""Alembic's entry point: runs the migrations on the connection ``upgrade_schema`` passes in
(inside its transaction, under its lock), or on ``sqlalchemy.url`` when a developer runs
Alembic by hand (``alembic_config()`` plus that option, e.g. to autogenerate a revision)."""

from alembic import context
from sqlalchemy import create_engine

from twice.indexer.schema import Base

config = context.config


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        run_migrations(connection)
        connection.commit()
    engine.dispose()
