"""indexes for the retention sweep

Revision ID: 0014
Revises: 0013

The retention sweep (issue 14) deletes finished outbox rows and old disclosure rows in
batches, oldest first; these indexes on their times let each batch find its rows
without scanning the table.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
    op.create_index("ix_disclosures_disclosed_at", "disclosures", ["disclosed_at"])


def downgrade() -> None:
    op.drop_index("ix_disclosures_disclosed_at", table_name="disclosures")
    op.drop_index("ix_outbox_created_at", table_name="outbox")
