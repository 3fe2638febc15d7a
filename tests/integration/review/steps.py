"""Shared steps of the review tests: a server whose reviewers are real accounts.

Reviewers are accounts registered through the Register RPC and granted the
operator role `review` through `OperatorRoles` (what the CLI calls). Their
sessions are created through the container's SessionService with the methods
a password + TOTP sign-in records (`("pwd", "otp")`): TOTP sign-in is the TOTP
part's work, and the review service only reads the token's `amr`.
"""

from __future__ import annotations

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


class HarnessDocuments:
    """Stores documents through the server's own DocumentService, as an upload would.

    Owners are the account id, or the phone holder's (`phone_owner`); reads by
    reviewers go through the same service, which audits them (`document.read`).
    """

    def __init__(self, container: Container) -> None:
        self._documents = container.documents

    def phone_owner(self, phone: str) -> str:
        """The owner of documents uploaded with a ticket of `phone`."""
        return self._documents.phone_owner(phone)

    async def add(self, owner: str, content: bytes = PDF, kind: str = "id_scan") -> str:
        """Store a document for `owner`; returns its id."""
        info = await self._documents.store(
            owner=owner,
            kind=kind,
            file_name="身份证.pdf",
            content_type="application/pdf",
            content=content,
        )
        return info.document_id


async def review_harness(
    harness_factory: HarnessFactory, **overrides: object
) -> tuple[Harness, HarnessDocuments]:
    """A server with open code limits, and a way to store documents in it."""
    h = await harness_factory(**{**OPEN_LIMITS, **overrides})
    return h, HarnessDocuments(h.container)


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
