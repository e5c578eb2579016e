"""baseline: every table as of the first migration; adopts catalogs written before migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Earlier code made tables with ``create_all`` (only the ones its imports had defined) and added
the newer ``images`` hash columns by hand. Here every missing table is created and every
missing column of ``images`` added (NULL until the next reindex computes the hashes); rows
already stored are left as they are.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LOG = logging.getLogger("twice.indexer.migrations")

# Columns of ``images`` that older catalogs lack (in the order they were added).
IMAGE_HASH_COLUMNS = (
    ("phash", sa.BigInteger),
    ("phash_version", sa.Integer),
    ("phash_bright", sa.BigInteger),
    ("phash_dark", sa.BigInteger),
)


def create_images() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("stored_path", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("page_url", sa.String(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("transform", sa.String(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        *(sa.Column(name, kind(), nullable=True) for name, kind in IMAGE_HASH_COLUMNS),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["images.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_images_parent_id", "images", ["parent_id"], unique=False)
    op.create_index("ix_images_sha256", "images", ["sha256"], unique=True)


def create_index_record() -> None:
    op.create_table(
        "index_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("index_type", sa.String(), nullable=False),
        sa.Column("vector_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def create_thresholds() -> None:
    op.create_table(
        "thresholds",
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("duplicate", sa.Double(), nullable=False),
        sa.Column("similar", sa.Double(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("details", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_version"),
    )


def create_crawls() -> None:
    op.create_table(
        "crawls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("listing", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("found", sa.Integer(), nullable=False),
        sa.Column("downloaded", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("refused", sa.JSON(), nullable=False),
        sa.Column("failed", sa.JSON(), nullable=False),
        sa.Column("last_run", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_crawls_key", "crawls", ["key"], unique=False)


def create_crawl_urls() -> None:
    op.create_table(
        "crawl_urls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("crawl_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.String(), nullable=True),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("page_url", sa.String(), nullable=True),
        sa.Column("next_url", sa.String(), nullable=True),
        sa.Column("page_number", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["crawl_id"], ["crawls.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("crawl_id", "kind", "url"),
    )
    op.create_index("ix_crawl_urls_crawl_id", "crawl_urls", ["crawl_id"], unique=False)
    op.create_index("ix_crawl_urls_image_id", "crawl_urls", ["image_id"], unique=False)


def create_report_pair_cache() -> None:
    op.create_table(
        "report_pair_cache",
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("index_type", sa.String(), nullable=False),
        sa.Column("member_ids", sa.LargeBinary(), nullable=False),
        sa.Column("member_keys", sa.LargeBinary(), nullable=False),
        sa.Column("pair_a", sa.LargeBinary(), nullable=False),
        sa.Column("pair_b", sa.LargeBinary(), nullable=False),
        sa.Column("pair_score", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_version"),
    )


def create_report_runs() -> None:
    op.create_table(
        "report_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def create_report_hash_cache() -> None:
    op.create_table(
        "report_hash_cache",
        sa.Column("scheme", sa.String(), nullable=False),
        sa.Column("radius", sa.Integer(), nullable=False),
        sa.Column("member_ids", sa.LargeBinary(), nullable=False),
        sa.Column("member_keys", sa.LargeBinary(), nullable=False),
        sa.Column("member_views", sa.LargeBinary(), nullable=False),
        sa.Column("pair_a", sa.LargeBinary(), nullable=False),
        sa.Column("pair_b", sa.LargeBinary(), nullable=False),
        sa.Column("pair_distance", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scheme"),
    )


# In creation order: a table's foreign keys point at tables above it.
TABLES = {
    "images": create_images,
    "index_record": create_index_record,
    "thresholds": create_thresholds,
    "crawls": create_crawls,
    "crawl_urls": create_crawl_urls,
    "report_pair_cache": create_report_pair_cache,
    "report_runs": create_report_runs,
    "report_hash_cache": create_report_hash_cache,
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    for name, create in TABLES.items():
        if name not in present:
            create()
    if "images" in present:
        columns = {column["name"] for column in inspector.get_columns("images")}
        for name, kind in IMAGE_HASH_COLUMNS:
            if name not in columns:
                op.add_column("images", sa.Column(name, kind(), nullable=True))
                LOG.info("catalog: added column images.%s", name)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: it would drop the catalog")
