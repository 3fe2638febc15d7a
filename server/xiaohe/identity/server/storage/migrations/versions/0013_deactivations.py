"""deactivation with a cooling-off period

Revision ID: 0013
Revises: 0012

`deactivations` holds the accounts in their cooling-off period after
AccountService.Deactivate (issue 14): when it was asked for, when it completes,
and the account's data key encrypted under a pending key kept outside the
database. Nothing existed before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deactivations",
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("requested_at", _UTC, nullable=False),
        sa.Column("due_at", _UTC, nullable=False),
        sa.Column("data_key_pending", sa.LargeBinary, nullable=False),
        sa.Column("case_keys_pending", sa.LargeBinary, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_deactivations_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name="pk_deactivations"),
    )
    op.create_index("ix_deactivations_due_at", "deactivations", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_deactivations_due_at", table_name="deactivations")
    op.drop_table("deactivations")
