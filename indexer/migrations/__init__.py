"""Alembic migrations of the catalog database; run by ``twice.indexer.migrate.upgrade_schema``."""
