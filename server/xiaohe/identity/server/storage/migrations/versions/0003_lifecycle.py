"""lifecycle flows: the masked IP of a consent, when the phone last changed

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:00:00.000000

Consents recorded before this revision get an empty masked IP (it was not kept).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ip_masked", sa.String(length=64), nullable=False, server_default="")
        )
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.alter_column("ip_masked", existing_type=sa.String(length=64), server_default=None)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_changed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("phone_changed_at")
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_column("ip_masked")
