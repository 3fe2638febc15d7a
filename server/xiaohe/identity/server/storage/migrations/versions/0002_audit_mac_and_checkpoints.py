"""audit chain: keyed MACs, the acting account, signed checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 16:00:00.000000

Rows written before this revision were chained with plain SHA-256: they are marked
`alg = 'sha256'` (legacy) and hold `actor_account = ''`; verification accepts them
only as a prefix before the first keyed row (docs/decisions.md). The column
defaults exist only to fill those rows and are dropped again, so every new row
names its algorithm and account explicitly, as storage/schema.py declares.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("actor_account", sa.String(length=40), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("alg", sa.String(length=16), nullable=False, server_default="sha256")
        )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("actor_account", existing_type=sa.String(length=40), server_default=None)
        batch_op.alter_column("alg", existing_type=sa.String(length=16), server_default=None)

    op.create_table(
        "audit_checkpoints",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("alg")
        batch_op.drop_column("actor_account")
