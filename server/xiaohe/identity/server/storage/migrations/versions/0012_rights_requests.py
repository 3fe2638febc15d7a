"""rights requests with a legal deadline (issue 14)

Revision ID: 0012
Revises: 0011

`rights_requests` holds a person's requests under PIPL Art. 44-50 (kind, state,
the free text sealed under the account's data key, the client that relayed it,
filing time, due date and the instant it becomes late) and their resolution
(outcome, the operator's sealed note, who and when). Nothing existed before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rights_requests",
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail_enc", sa.LargeBinary, nullable=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("filed_at", _UTC, nullable=False),
        sa.Column("due_on", sa.String(10), nullable=False),
        sa.Column("due_at", _UTC, nullable=False),
        sa.Column("outcome", sa.String(24), nullable=True),
        sa.Column("note_enc", sa.LargeBinary, nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
        sa.Column("resolved_at", _UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_rights_requests_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name="pk_rights_requests"),
    )
    op.create_index(
        "ix_rights_requests_account", "rights_requests", ["account_id", "filed_at", "request_id"]
    )
    op.create_index("ix_rights_requests_due", "rights_requests", ["state", "due_at", "request_id"])


def downgrade() -> None:
    op.drop_index("ix_rights_requests_due", table_name="rights_requests")
    op.drop_index("ix_rights_requests_account", table_name="rights_requests")
    op.drop_table("rights_requests")
