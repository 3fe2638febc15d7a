"""The durable schema, as SQLAlchemy Core tables; Alembic migrations create exactly these.

Personal data never sits here in the clear: `*_enc` columns hold AES-256-GCM
blobs under the account's data key, and lookups go through `identifiers`
(blind indexes: HMAC-SHA256 of the normalised value).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UtcDateTime = sa.DateTime(timezone=True)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(200), nullable=False),
    sa.Column("grants", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    # A live client's name is unique; a revoked client's name may be used again.
    sa.Index(
        "uq_clients_live_name",
        "name",
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    ),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor_client", sa.String(64), nullable=False),
    # The end-user account acting ("" when none); rows from before 0002 hold "".
    sa.Column("actor_account", sa.String(40), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(50), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    # The chain value: HMAC-SHA256 (alg `hmac-sha256`), or plain SHA-256 on legacy rows.
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("alg", sa.String(16), nullable=False),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    # One checkpoint per chain head: concurrent workers signing the same head collide here.
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("payload_enc", sa.LargeBinary, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("lease_until", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime, nullable=True),
    sa.Column("provider", sa.String(32), nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
    # The id the provider answered (Aliyun BizId, Tencent SerialNo, a gateway's id).
    sa.Column("provider_message_id", sa.String(64), nullable=True),
    # The receipt: delivered, failed, expired or unknown (NULL until one arrives).
    sa.Column("delivery", sa.String(16), nullable=True),
    # The platform's or carrier's code from the receipt (DELIVRD, isv.*, MK:0001 ...).
    sa.Column("delivery_code", sa.String(32), nullable=True),
    # When the receipt says the handset got it (or the carrier gave up), and when it came.
    sa.Column("done_at", UtcDateTime, nullable=True),
    sa.Column("reported_at", UtcDateTime, nullable=True),
    # An SMS destination's number prefix (country code and 7 digits, "86-1380013"), for
    # delivery and pumping metrics; a prefix is shared by 10,000 numbers, not personal data.
    sa.Column("dest_prefix", sa.String(16), nullable=True),
    sa.Index("ix_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_outbox_provider_message", "provider", "provider_message_id"),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("account_id", sa.String(40), primary_key=True),
    sa.Column("subject_type", sa.String(20), nullable=False),
    sa.Column("login_name", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("accepted_policy_version", sa.Integer, nullable=False),
    sa.Column("real_name_level", sa.Integer, nullable=False, default=0),
    sa.Column("master_key_id", sa.String(40), nullable=False),
    sa.Column("data_key_wrapped", sa.LargeBinary, nullable=True),
    sa.Column("phone_enc", sa.LargeBinary, nullable=True),
    sa.Column("email_enc", sa.LargeBinary, nullable=True),
    sa.Column("profile_enc", sa.LargeBinary, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("phone_changed_at", UtcDateTime, nullable=True),
    # When the email was last bound, replaced or removed (the ChangePhone cooling-off).
    sa.Column("email_changed_at", UtcDateTime, nullable=True),
    # When a carrier reported the bound phone recycled (二次号): the phone identifier is
    # gone (free for its new owner) and the next password login must re-verify a phone.
    sa.Column("phone_stale_at", UtcDateTime, nullable=True),
)

identifiers = sa.Table(
    "identifiers",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("blind_index", sa.String(64), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.String(40), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("audience", sa.String(100), nullable=False),
    sa.Column("amr", sa.String(100), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("ip_masked", sa.String(64), nullable=False, default=""),
    sa.Column("user_agent", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_used_at", UtcDateTime, nullable=False),
    sa.Column("idle_expires_at", UtcDateTime, nullable=False),
    sa.Column("absolute_expires_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.Column("revoke_reason", sa.String(40), nullable=True),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "session_id",
        sa.String(40),
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=True),
)

policy_versions = sa.Table(
    "policy_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("published_at", UtcDateTime, nullable=False),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("consent_id", sa.String(40), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("policy_version", sa.Integer, nullable=False),
    sa.Column("purpose", sa.String(40), nullable=False),
    sa.Column("accepted_at", UtcDateTime, nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(40), nullable=False),
    sa.Column("ip_masked", sa.String(64), nullable=False),
)

# -- identity documents and real-name verification (realname/, migration 0008) ------

# Consents of phone holders who have no account to sign in with (an identity document
# uploaded with a phone ticket): `holder` is `phone:<blind index>`, as documents' owner.
holder_consents = sa.Table(
    "holder_consents",
    metadata,
    sa.Column("consent_id", sa.String(40), primary_key=True),
    sa.Column("holder", sa.String(80), nullable=False, index=True),
    sa.Column("policy_version", sa.Integer, nullable=False),
    sa.Column("purpose", sa.String(40), nullable=False),
    sa.Column("accepted_at", UtcDateTime, nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(40), nullable=False),
    sa.Column("ip_masked", sa.String(64), nullable=False),
)

# One row per stored document; the encrypted bytes live in the document store under
# `storage_key`. `data_key_wrapped` is set only for a phone holder's document (its own
# data key under the master key); an account's documents use the account's data key.
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("document_id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("content_type", sa.String(40), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("file_name_enc", sa.LargeBinary, nullable=False),
    sa.Column("storage_key", sa.String(120), nullable=False, unique=True),
    sa.Column("data_key_wrapped", sa.LargeBinary, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Real-name submissions; every detail (names, numbers, address) is in `details_enc`
# under the account's data key. `claim` is the blind index the submission claims
# (name + ID number, or the USCC), used to keep verified claims unique.
real_name_submissions = sa.Table(
    "real_name_submissions",
    metadata,
    sa.Column("submission_id", sa.String(40), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("subject_type", sa.String(20), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason_enc", sa.LargeBinary, nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("verifier", sa.String(20), nullable=False),
    sa.Column("claim", sa.String(80), nullable=False),
    sa.Column("details_enc", sa.LargeBinary, nullable=False),
    sa.Column("document_ids", sa.Text, nullable=False),
    sa.Column("submitted_at", UtcDateTime, nullable=False),
    sa.Column("decided_at", UtcDateTime, nullable=True),
    sa.Column("decided_by", sa.String(40), nullable=True),
)

# Verified claims: one account per name + ID number (natural) or USCC (legal).
real_name_claims = sa.Table(
    "real_name_claims",
    metadata,
    sa.Column("claim", sa.String(80), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("submission_id", sa.String(40), nullable=False),
    sa.Column("verified_at", UtcDateTime, nullable=False),
)

# -- manual review (issue 12, migration 0009) ------------------------------------------

operator_roles = sa.Table(
    "operator_roles",
    metadata,
    # An operator role (`review`) held by an account; granted and revoked by the CLI.
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("role", sa.String(32), primary_key=True),
    sa.Column("granted_at", UtcDateTime, nullable=False),
)

review_cases = sa.Table(
    "review_cases",
    metadata,
    sa.Column("case_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    # The account the case is about; NULL for a recovery whose identity matched none.
    sa.Column("account_id", sa.String(40), nullable=True, index=True),
    sa.Column("subject_type", sa.String(20), nullable=False),
    sa.Column("reference", sa.String(100), nullable=False),
    # JSON list of document ids (ids, not personal data).
    sa.Column("document_ids", sa.Text, nullable=False),
    # The case's own data key (wrapped), and the compared fields (JSON) sealed under it.
    sa.Column("data_key_wrapped", sa.LargeBinary, nullable=False),
    sa.Column("fields_enc", sa.LargeBinary, nullable=False),
    sa.Column("opened_at", UtcDateTime, nullable=False),
    sa.Column("first_approver", sa.String(40), nullable=True),
    sa.Column("decided_at", UtcDateTime, nullable=True),
    sa.Index("ix_review_cases_queue", "state", "opened_at", "case_id"),
)

review_decisions = sa.Table(
    "review_decisions",
    metadata,
    sa.Column("decision_id", sa.String(40), primary_key=True),
    sa.Column(
        "case_id",
        sa.String(40),
        sa.ForeignKey("review_cases.case_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # The decision's place in its case (1, 2): the order does not rest on equal clocks.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("reviewer_account_id", sa.String(40), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    # The reason, sealed under the case's data key (it may quote personal data).
    sa.Column("reason_enc", sa.LargeBinary, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("case_id", "seq", name="uq_review_decisions_case_seq"),
)

review_notes = sa.Table(
    "review_notes",
    metadata,
    sa.Column("note_id", sa.String(40), primary_key=True),
    sa.Column(
        "case_id",
        sa.String(40),
        sa.ForeignKey("review_cases.case_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("author_account_id", sa.String(40), nullable=False),
    sa.Column("text_enc", sa.LargeBinary, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)

# The TOTP second factor (issue 12): one factor per account, pending until confirmed.
# `secret_enc` is the base32 secret sealed under the key ring with the account id and
# column as associated data; `last_used_step` is the newest 30-second step accepted
# (a code is accepted once: a conditional UPDATE moves it forward).
totp_factors = sa.Table(
    "totp_factors",
    metadata,
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("secret_enc", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("activated_at", UtcDateTime, nullable=True),
    sa.Column("last_used_step", sa.BigInteger, nullable=True),
)

# Single-use recovery codes of an active factor, only as keyed HMAC-SHA256 (hex).
totp_recovery_codes = sa.Table(
    "totp_recovery_codes",
    metadata,
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=True),
)

# -- the directory's disclosure log (privacy/disclosures, migration 0010) -----------

# Every release of identity fields to a client (DirectoryService): whose, to whom, which
# fields (names, comma-separated), for what purpose, when. The person lists them
# (PrivacyService.ListDisclosures); kept as long as the audit log.
disclosures = sa.Table(
    "disclosures",
    metadata,
    sa.Column("disclosure_id", sa.String(40), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("fields", sa.String(400), nullable=False),
    sa.Column("masked", sa.String(400), nullable=False),
    sa.Column("purpose", sa.String(40), nullable=False),
    sa.Column("disclosed_at", UtcDateTime, nullable=False),
    sa.Index("ix_disclosures_account_time", "account_id", "disclosed_at", "disclosure_id"),
)

# -- issue 14: retention (migration 0014) --------------------------------------------

# The retention sweep finds old rows by time (flows/retention.py): without these, each of
# its batches would scan the whole table. Sessions are not indexed for it: their end is
# the earliest of three times, and their expiry columns change on every refresh.
ix_outbox_created_at = sa.Index("ix_outbox_created_at", outbox.c.created_at)
ix_disclosures_disclosed_at = sa.Index("ix_disclosures_disclosed_at", disclosures.c.disclosed_at)

# -- end retention --

# -- issue 14: rights requests (privacy/requests.py, migration 0012) --------------------

# A person's request under PIPL Art. 44-50 (ACCESS, COPY, CORRECTION, DELETION,
# WITHDRAWAL, COMPLAINT) and its answer. The person's free text and the operator's note
# are sealed under the account's data key (bound to the request by associated data), so
# crypto-shredding the account makes them unreadable too. `due_on` is the local date
# (Asia/Shanghai) of the 15th working day, `due_at` the instant the request becomes late.
rights_requests = sa.Table(
    "rights_requests",
    metadata,
    sa.Column("request_id", sa.String(40), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("detail_enc", sa.LargeBinary, nullable=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("filed_at", UtcDateTime, nullable=False),
    sa.Column("due_on", sa.String(10), nullable=False),
    sa.Column("due_at", UtcDateTime, nullable=False),
    sa.Column("outcome", sa.String(24), nullable=True),
    sa.Column("note_enc", sa.LargeBinary, nullable=True),
    sa.Column("resolved_by", sa.String(64), nullable=True),
    sa.Column("resolved_at", UtcDateTime, nullable=True),
    sa.Index("ix_rights_requests_account", "account_id", "filed_at", "request_id"),
    sa.Index("ix_rights_requests_due", "state", "due_at", "request_id"),
)
# -- end rights requests --

# -- issue 14: deactivation (deactivation/, migration 0013) ---------------------------

# An account in its cooling-off period after AccountService.Deactivate: when it was
# asked for and when it completes. `data_key_pending` is the account's data key
# encrypted under a pending key that lives only in Redis (deactivation/pending_keys.py);
# the account row holds no wrap of it meanwhile, so destroying the pending key destroys
# every copy of the data key, the ones in database backups included.
deactivations = sa.Table(
    "deactivations",
    metadata,
    sa.Column(
        "account_id",
        sa.String(40),
        sa.ForeignKey("accounts.account_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("requested_at", UtcDateTime, nullable=False),
    sa.Column("due_at", UtcDateTime, nullable=False, index=True),
    sa.Column("data_key_pending", sa.LargeBinary, nullable=False),
    # The data keys of the review cases about the account (JSON, by case id), likewise.
    sa.Column("case_keys_pending", sa.LargeBinary, nullable=True),
)
# -- end deactivation --

# -- issue 14: consent and export (migration 0011) ---------------------------------------

# A consent record is a grant or a withdrawal (the ledger is append-only: withdrawing adds
# a row). Rows from before 0011 are grants.
consents.append_column(sa.Column("action", sa.String(16), nullable=False, server_default="grant"))
# The blind index of an outbox row's destination (kind `phone` or `email`, as in
# `identifiers`), so an export can list the messages sent to the account's channels
# without the destination being stored in the clear. NULL before 0011.
outbox.append_column(sa.Column("recipient", sa.String(64), nullable=True))
sa.Index("ix_outbox_recipient", outbox.c.recipient, outbox.c.created_at)
# Whether a policy version changed the purposes of processing: such a version gates sign-in
# until the person accepts it; any other is only notified. Versions before 0011 gate.
policy_versions.append_column(
    sa.Column("purposes_changed", sa.Boolean, nullable=False, server_default=sa.true())
)

# -- end consent and export ---------------------------------------------------------------
