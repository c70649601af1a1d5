"""genotypes.arch_hash: one genotype id per architecture and tenant (issue 13)

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("genotypes", sa.Column("arch_hash", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_genotypes_arch_hash"), "genotypes", ["arch_hash"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_genotypes_arch_hash"), table_name="genotypes")
    with op.batch_alter_table("genotypes") as batch:
        batch.drop_column("arch_hash")
