"""delivery receipts on outbox rows; stale phone bindings after a recycled-number report

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 19:00:00.000000

Outbox rows gain the provider's message id and the receipt (state, carrier code,
times), plus the destination's number prefix for per-prefix metrics. Accounts gain
`phone_stale_at`, set when a carrier reports the bound number recycled. Rows from
before this revision have none of these: no receipt, no prefix, not stale.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_message_id", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("delivery", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("delivery_code", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("done_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("dest_prefix", sa.String(16), nullable=True))
        batch_op.create_index("ix_outbox_provider_message", ["provider", "provider_message_id"])
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_stale_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("phone_stale_at")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_provider_message")
        batch_op.drop_column("dest_prefix")
        batch_op.drop_column("reported_at")
        batch_op.drop_column("done_at")
        batch_op.drop_column("delivery_code")
        batch_op.drop_column("delivery")
        batch_op.drop_column("provider_message_id")
