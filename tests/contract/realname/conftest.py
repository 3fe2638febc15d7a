"""A RealNameFlow on the real stores (SQLite and PostgreSQL), with a recording review queue.

Accounts, documents, submissions, consents and audit records are real. Two
doubles stand in at Protocol level for parts built elsewhere: `RecordingQueue`
for the review flow's `ReviewQueue` (REVIEW's branch), and a ticket checker
that knows no tickets (uploads with phone tickets are tested over gRPC).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.document_samples import png_sample
from xiaohe.identity.server.accounts.models import NewAccount, SubjectType
from xiaohe.identity.server.accounts.repository import SqlAccountRepository
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketClaims
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import TicketInvalid
from xiaohe.identity.server.flows.realname import RealNameFlow
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.realname.documents import DocumentService, FileDocumentStore
from xiaohe.identity.server.realname.sniffing import PNG
from xiaohe.identity.server.realname.submissions import SubmissionStore
from xiaohe.identity.server.realname.verifiers import RuleVerifier, Verifier
from xiaohe.identity.server.storage.database import Database

ID_NUMBER = "11010519491231002X"
OTHER_ID_NUMBER = "440524188001010014"
NAME = "张三丰"
USCC = "91350100M000100Y43"


@dataclass
class RecordingQueue:
    """A ReviewQueue that records the cases it is asked to open (in the caller's transaction)."""

    cases: list[dict[str, Any]] = field(default_factory=list)

    async def open_case(
        self,
        *,
        kind: str,
        account_id: str | None,
        subject_type: str,
        fields: Mapping[str, str],
        document_ids: Sequence[str],
        reference: str,
    ) -> str:
        """Remember the case; its id is `case-<n>`."""
        self.cases.append(
            {
                "kind": kind,
                "account_id": account_id,
                "subject_type": subject_type,
                "fields": dict(fields),
                "document_ids": list(document_ids),
                "reference": reference,
            }
        )
        return f"case-{len(self.cases)}"


class NoTickets:
    """A ticket checker for which every ticket is invalid."""

    async def check_any(
        self, ticket: str, *, purposes: Collection[Purpose], channel: Channel | None = None
    ) -> TicketClaims:
        """Always TicketInvalid."""
        raise TicketInvalid()


@dataclass
class RealNameEnv:
    """The flow and the real services under it."""

    database: Database
    clock: FakeClock
    accounts: AccountService
    documents: DocumentService
    submissions: SubmissionStore
    consents: ConsentLedger
    queue: RecordingQueue
    audit: AuditLog
    policies: PolicyStore
    store_dir: Path
    _flow_args: dict[str, Any]

    def flow(self, **changes: Any) -> RealNameFlow:
        """A RealNameFlow with these constructor arguments changed."""
        return RealNameFlow(**{**self._flow_args, **changes})

    async def account(self, subject_type: SubjectType = SubjectType.NATURAL_PERSON) -> str:
        """A new active account of `subject_type`; returns its id."""
        account_id = self.accounts.new_account_id()
        await self.accounts.create(
            NewAccount(
                account_id=account_id,
                subject_type=subject_type,
                login_name=f"user-{secrets.token_hex(4)}",
                password_hash="$argon2id$unused",
                accepted_policy_version=1,
                phone="+86138" + str(secrets.randbelow(10**8)).zfill(8),
            ),
            [],
        )
        return account_id

    async def document(self, owner: str, kind: str = "id_scan") -> str:
        """A stored PNG document of `owner` and `kind`; returns its id."""
        info = await self.documents.store(
            owner=owner, kind=kind, file_name="scan.png", content_type=PNG, content=png_sample()
        )
        return info.document_id


@pytest.fixture
async def env(database: Database, clock: FakeClock, tmp_path: Path) -> RealNameEnv:
    keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
    cipher = DataKeyCipher(keyring)
    blind = BlindIndex(keyring.blind_index_key)
    audit = AuditLog(database, clock, keyring.audit_keys)
    accounts = AccountService(
        repository=SqlAccountRepository(database),
        uow=database,
        cipher=cipher,
        master_keys=keyring,
        blind_index=blind,
        clock=clock,
    )
    store_dir = tmp_path / "documents"
    documents = DocumentService(
        database=database,
        store=FileDocumentStore(store_dir),
        cipher=cipher,
        account_keys=accounts,
        blind_index=blind,
        audit=audit,
        clock=clock,
    )
    submissions = SubmissionStore(
        database=database,
        cipher=cipher,
        account_keys=accounts,
        blind_index=blind,
        clock=clock,
        dialect=database.dialect,
    )
    consents = ConsentLedger(database, clock)
    policies = PolicyStore(database, clock)
    await policies.ensure_seeded()
    queue = RecordingQueue()
    verifier: Verifier = RuleVerifier()
    args: dict[str, Any] = {
        "uow": database,
        "accounts": accounts,
        "documents": documents,
        "submissions": submissions,
        "consents": consents,
        "policies": policies,
        "tickets": NoTickets(),
        "verifier": verifier,
        "clock": clock,
        "audit": audit,
        "review_queue": queue,
    }
    return RealNameEnv(
        database,
        clock,
        accounts,
        documents,
        submissions,
        consents,
        queue,
        audit,
        policies,
        store_dir,
        args,
    )
