"""identity documents, phone holders' consents, real-name submissions and verified claims

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:40:00.000000

New tables only (nothing existing changes): `documents` (metadata of encrypted
identity documents; the bytes live in the document store), `holder_consents`
(separate consents of phone holders without an account), `real_name_submissions`
(encrypted details and reason, state, level) and `real_name_claims` (one account per
verified name + ID number or USCC, by blind index).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "holder_consents",
        sa.Column("consent_id", sa.String(40), nullable=False),
        sa.Column("holder", sa.String(80), nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=False),
        sa.Column("purpose", sa.String(40), nullable=False),
        sa.Column("accepted_at", _UTC, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("ip_masked", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("consent_id", name="pk_holder_consents"),
    )
    op.create_index("ix_holder_consents_holder", "holder_consents", ["holder"])
    op.create_table(
        "documents",
        sa.Column("document_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("content_type", sa.String(40), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("file_name_enc", sa.LargeBinary, nullable=False),
        sa.Column("storage_key", sa.String(120), nullable=False),
        sa.Column("data_key_wrapped", sa.LargeBinary, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("document_id", name="pk_documents"),
        sa.UniqueConstraint("storage_key", name="uq_documents_storage_key"),
    )
    op.create_index("ix_documents_owner", "documents", ["owner"])
    op.create_table(
        "real_name_submissions",
        sa.Column("submission_id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("subject_type", sa.String(20), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason_enc", sa.LargeBinary, nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("verifier", sa.String(20), nullable=False),
        sa.Column("claim", sa.String(80), nullable=False),
        sa.Column("details_enc", sa.LargeBinary, nullable=False),
        sa.Column("document_ids", sa.Text, nullable=False),
        sa.Column("submitted_at", _UTC, nullable=False),
        sa.Column("decided_at", _UTC, nullable=True),
        sa.Column("decided_by", sa.String(40), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_real_name_submissions_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("submission_id", name="pk_real_name_submissions"),
    )
    op.create_index(
        "ix_real_name_submissions_account_id", "real_name_submissions", ["account_id"]
    )
    op.create_table(
        "real_name_claims",
        sa.Column("claim", sa.String(80), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("submission_id", sa.String(40), nullable=False),
        sa.Column("verified_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_real_name_claims_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("claim", name="pk_real_name_claims"),
    )
    op.create_index("ix_real_name_claims_account_id", "real_name_claims", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_real_name_claims_account_id", table_name="real_name_claims")
    op.drop_table("real_name_claims")
    op.drop_index("ix_real_name_submissions_account_id", table_name="real_name_submissions")
    op.drop_table("real_name_submissions")
    op.drop_index("ix_documents_owner", table_name="documents")
    op.drop_table("documents")
    op.drop_index("ix_holder_consents_holder", table_name="holder_consents")
    op.drop_table("holder_consents")
