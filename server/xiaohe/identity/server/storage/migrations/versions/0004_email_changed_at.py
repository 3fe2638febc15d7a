"""when the email last changed (bound, replaced or removed)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09 10:00:00.000000

Accounts whose email changed before this revision have no time recorded: their
email counts as bound before any cooling-off window (as `phone_changed_at` in 0003).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_changed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("email_changed_at")
