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
    for table, text_column, author in (
        ("review_decisions", "reason_enc", "reviewer_account_id"),
        ("review_notes", "text_enc", "author_account_id"),
    ):
        key = "decision_id" if table == "review_decisions" else "note_id"
        columns = [
            sa.Column(key, sa.String(40), nullable=False),
            sa.Column("case_id", sa.String(40), nullable=False),
            sa.Column(author, sa.String(40), nullable=False),
        ]
        if table == "review_decisions":
            columns.append(sa.Column("decision", sa.String(16), nullable=False))
        op.create_table(
            table,
            *columns,
            sa.Column(text_column, sa.LargeBinary, nullable=False),
            sa.Column("at", _UTC, nullable=False),
            sa.ForeignKeyConstraint(
                ["case_id"],
                ["review_cases.case_id"],
                name=f"fk_{table}_case_id_review_cases",
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint(key, name=f"pk_{table}"),
        )
        op.create_index(f"ix_{table}_case_id", table, ["case_id"])


def downgrade() -> None:
    op.drop_index("ix_review_notes_case_id", "review_notes")
    op.drop_table("review_notes")
    op.drop_index("ix_review_decisions_case_id", "review_decisions")
    op.drop_table("review_decisions")
    op.drop_index("ix_review_cases_queue", "review_cases")
    op.drop_index("ix_review_cases_account_id", "review_cases")
    op.drop_table("review_cases")
    op.drop_table("operator_roles")
