"""dataset ingest: status, source, content hash, validation report, soft delete

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("datasets") as b:
        b.add_column(sa.Column("status", sa.String(length=16), server_default="ready", nullable=False))
        b.add_column(sa.Column("source", sa.String(length=16), server_default="directory", nullable=False))
        b.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
        b.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        b.add_column(sa.Column("report", JSON, nullable=True))
        b.add_column(sa.Column("validation_job_id", sa.String(length=36), nullable=True))
        b.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_datasets_status", "datasets", ["status"], unique=False)
    op.create_index("ix_datasets_tenant_sha256", "datasets", ["tenant_id", "sha256"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_datasets_tenant_sha256", table_name="datasets")
    op.drop_index("ix_datasets_status", table_name="datasets")
    with op.batch_alter_table("datasets") as b:
        for col in ("deleted_at", "validation_job_id", "report", "size_bytes", "sha256", "source", "status"):
            b.drop_column(col)
