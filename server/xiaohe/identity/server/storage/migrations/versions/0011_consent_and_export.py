"""consent withdrawals, outbox recipients, notify-only policies (issue 14: consent, export)

Revision ID: 0011
Revises: 0010

`consents.action` tells a grant from a withdrawal (PrivacyService.WithdrawConsent
appends a withdrawal; every existing row is a grant). `outbox.recipient` holds
the blind index of a message's destination, so ExportMyData can list the
messages sent to the account's phone and email; rows written before this
revision have none and are not listed. `policy_versions.purposes_changed`
tells a version that gates sign-in until accepted (purposes changed; every
version published before this revision) from one that is only notified.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consents") as batch:
        batch.add_column(
            sa.Column("action", sa.String(16), nullable=False, server_default="grant")
        )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("recipient", sa.String(64), nullable=True))
    op.create_index("ix_outbox_recipient", "outbox", ["recipient", "created_at"])
    with op.batch_alter_table("policy_versions") as batch:
        batch.add_column(
            sa.Column("purposes_changed", sa.Boolean, nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("policy_versions") as batch:
        batch.drop_column("purposes_changed")
    op.drop_index("ix_outbox_recipient", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("recipient")
    with op.batch_alter_table("consents") as batch:
        batch.drop_column("action")
