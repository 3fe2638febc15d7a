"""manual review: operator roles, review cases, their decisions and notes

Revision ID: 0009
Revises: 0008

Reviewers are accounts holding the operator role `review` (`operator_roles`).
A case (`review_cases`) holds what a reviewer compares, sealed under the case's
own data key; its decisions (`review_decisions`) and notes (`review_notes`)
keep who, when and a sealed text. Nothing existed before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "operator_roles",
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("granted_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_operator_roles_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "role", name="pk_operator_roles"),
    )
    op.create_table(
        "review_cases",
        sa.Column("case_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=True),
        sa.Column("subject_type", sa.String(20), nullable=False),
        sa.Column("reference", sa.String(100), nullable=False),
        sa.Column("document_ids", sa.Text, nullable=False),
        sa.Column("data_key_wrapped", sa.LargeBinary, nullable=False),
        sa.Column("fields_enc", sa.LargeBinary, nullable=False),
        sa.Column("opened_at", _UTC, nullable=False),
        sa.Column("first_approver", sa.String(40), nullable=True),
        sa.Column("decided_at", _UTC, nullable=True),
        sa.PrimaryKeyConstraint("case_id", name="pk_review_cases"),
    )
    op.create_index("ix_review_cases_account_id", "review_cases", ["account_id"])
    op.create_index("ix_review_cases_queue", "review_cases", ["state", "opened_at", "case_id"])
    op.create_table(
        "review_decisions",
        sa.Column("decision_id", sa.String(40), nullable=False),
        sa.Column("case_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("reviewer_account_id", sa.String(40), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason_enc", sa.LargeBinary, nullable=False),
        sa.Column("at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["review_cases.case_id"],
            name="fk_review_decisions_case_id_review_cases",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("decision_id", name="pk_review_decisions"),
        sa.UniqueConstraint("case_id", "seq", name="uq_review_decisions_case_seq"),
    )
    op.create_index("ix_review_decisions_case_id", "review_decisions", ["case_id"])
    op.create_table(
        "review_notes",
        sa.Column("note_id", sa.String(40), nullable=False),
        sa.Column("case_id", sa.String(40), nullable=False),
        sa.Column("author_account_id", sa.String(40), nullable=False),
        sa.Column("text_enc", sa.LargeBinary, nullable=False),
        sa.Column("at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["review_cases.case_id"],
            name="fk_review_notes_case_id_review_cases",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("note_id", name="pk_review_notes"),
    )
    op.create_index("ix_review_notes_case_id", "review_notes", ["case_id"])


def downgrade() -> None:
    op.drop_index("ix_review_notes_case_id", "review_notes")
    op.drop_table("review_notes")
    op.drop_index("ix_review_decisions_case_id", "review_decisions")
    op.drop_table("review_decisions")
    op.drop_index("ix_review_cases_queue", "review_cases")
    op.drop_index("ix_review_cases_account_id", "review_cases")
    op.drop_table("review_cases")
    op.drop_table("operator_roles")
