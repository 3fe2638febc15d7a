"""TOTP second factor: totp_factors and totp_recovery_codes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:30:00.000000

One factor per account (`totp_factors`: the sealed secret, pending or active, the
last accepted time step) and its single-use recovery codes, stored only as keyed
hashes (`totp_recovery_codes`). Both go with their account (ON DELETE CASCADE).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "totp_factors",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_step", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name=op.f("fk_totp_factors_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_totp_factors")),
    )
    op.create_table(
        "totp_recovery_codes",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name=op.f("fk_totp_recovery_codes_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "code_hash", name=op.f("pk_totp_recovery_codes")),
    )


def downgrade() -> None:
    op.drop_table("totp_recovery_codes")
    op.drop_table("totp_factors")
