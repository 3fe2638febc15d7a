"""Shared steps of the review tests: a server whose reviewers are real accounts.

Reviewers are accounts registered through the Register RPC and granted the
operator role `review` through `OperatorRoles` (what the CLI calls). Their
sessions are created through the container's SessionService with the methods
a password + TOTP sign-in records (`("pwd", "otp")`): TOTP sign-in is the TOTP
part's work, and the review service only reads the token's `amr`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from tests.integration.accounts.channel_steps import OPEN_LIMITS, register, settle
from tests.integration.conftest import Harness, HarnessFactory
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.review.models import REVIEW_ROLE
from xiaohe.identity.server.sessions.models import SessionSubject
from xiaohe.identity.v1 import review_pb2, review_pb2_grpc

if TYPE_CHECKING:
    from xiaohe.identity.v1.review_pb2_grpc import ReviewServiceAsyncStub

REVIEWER = "shen.pingshen"
REVIEWER_PHONE = "+8613600006666"
SECOND_REVIEWER = "lu.hesheng"
SECOND_REVIEWER_PHONE = "+8613600007777"
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 400 + b"\n%%EOF\n"
"""A document of about 100 kB: more than one 64 kB chunk."""


@dataclass(frozen=True)
class StoredDocument:
    """A document's metadata, as `realname.documents.DocumentInfo` has it."""

    document_id: str
    owner: str
    kind: str
    content_type: str
    size: int
    file_name: str
    created_at: float


class HarnessDocuments:
    """A small real document service behind interface 1 (in memory), for these tests.

    Owners are what the real service uses (the account id, or `phone:` and the
    phone's blind index) and every read is audited (`document.read`) before its
    first byte, with the reader as the acting account.
    """

    def __init__(self, container: Container) -> None:
        self._container = container
        self._stored: dict[str, tuple[StoredDocument, bytes]] = {}

    def phone_owner(self, phone: str) -> str:
        """The owner of documents uploaded with a ticket of `phone`."""
        return "phone:" + self._container.blind_index.compute("phone", phone)

    def add(self, owner: str, content: bytes = PDF, kind: str = "id_scan") -> str:
        """Store a document for `owner`; returns its id."""
        document_id = f"doc_{len(self._stored) + 1:024d}"
        info = StoredDocument(
            document_id, owner, kind, "application/pdf", len(content), "身份证.pdf", 0.0
        )
        self._stored[document_id] = (info, content)
        return document_id

    async def info(self, document_id: str) -> StoredDocument | None:
        """The metadata, or None."""
        found = self._stored.get(document_id)
        return None if found is None else found[0]

    async def chunks(
        self, document_id: str, *, reader: str, why: str, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        """The bytes in chunks; the read is audited first."""
        _, content = self._stored[document_id]
        await self._container.audit.record("document.read", document_id, why, actor_account=reader)
        for start in range(0, len(content), chunk_size):
            yield content[start : start + chunk_size]


async def review_harness(
    harness_factory: HarnessFactory, **overrides: object
) -> tuple[Harness, HarnessDocuments]:
    """A server with open code limits whose review reads `HarnessDocuments`."""
    holder: list[HarnessDocuments] = []

    def inject(container: Container) -> None:
        holder.append(HarnessDocuments(container))
        container.__dict__["review_documents"] = holder[0]  # the cached property, set first

    h = await harness_factory(before_start=inject, **{**OPEN_LIMITS, **overrides})
    return h, holder[0]


async def reviewer_session(
    h: Harness, login_name: str, phone: str, *, amr: tuple[str, ...] = ("pwd", "otp")
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Register an account, grant it `review`, sign it in with `amr`; returns its id and the
    console's metadata (the harness client's credentials and the reviewer's token)."""
    account_id = await register(h, login_name, phone)
    await h.container.operator_roles.grant(account_id, REVIEW_ROLE)
    return account_id, await session_metadata(h, account_id, amr=amr)


async def session_metadata(
    h: Harness, account_id: str, *, amr: tuple[str, ...] = ("pwd", "otp")
) -> tuple[tuple[str, str], ...]:
    """Metadata of a console call by the account, signed in with `amr`."""
    issued = await h.container.sessions.create(
        SessionSubject(account_id=account_id, subject_type="NATURAL_PERSON", rn_level=0),
        amr,
        client_id="console",
    )
    return (*h.metadata, ("authorization", f"Bearer {issued.access_token}"))


def review_stub(h: Harness) -> ReviewServiceAsyncStub:
    """A ReviewService stub on the harness channel."""
    return review_pb2_grpc.ReviewServiceStub(h.channel)


async def decide(
    h: Harness,
    metadata: tuple[tuple[str, str], ...],
    case_id: str,
    decision: review_pb2.Decision.ValueType,
    reason: str = "证件与账号信息一致",
) -> review_pb2.CaseState.ValueType:
    """DecideCase; returns the case's new state (and lets the notices go out)."""
    response = await review_stub(h).DecideCase(
        review_pb2.DecideCaseRequest(case_id=case_id, decision=decision, reason=reason),
        metadata=metadata,
    )
    await settle(h)
    return response.state


async def streamed(
    h: Harness, metadata: tuple[tuple[str, str], ...], case_id: str, document_id: str
) -> tuple[str, int, bytes]:
    """StreamDocument: the content type and size of the first message, and every byte."""
    call = review_stub(h).StreamDocument(
        review_pb2.StreamDocumentRequest(case_id=case_id, document_id=document_id),
        metadata=metadata,
    )
    content_type, size, parts = "", 0, []
    async for message in call:
        if not parts:
            content_type, size = message.content_type, message.size
        parts.append(message.chunk)
    assert await call.code() == grpc.StatusCode.OK
    return content_type, size, b"".join(parts)
