"""the directory's disclosure log

Revision ID: 0010
Revises: 0009

`disclosures` records every release of identity fields to a client through
DirectoryService (account, client, field names, which of them masked, purpose,
time), newest first per account for PrivacyService.ListDisclosures. Nothing
existed before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "disclosures",
        sa.Column("disclosure_id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("fields", sa.String(400), nullable=False),
        sa.Column("masked", sa.String(400), nullable=False),
        sa.Column("purpose", sa.String(40), nullable=False),
        sa.Column("disclosed_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_disclosures_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("disclosure_id", name="pk_disclosures"),
    )
    op.create_index(
        "ix_disclosures_account_time",
        "disclosures",
        ["account_id", "disclosed_at", "disclosure_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_disclosures_account_time", table_name="disclosures")
    op.drop_table("disclosures")
