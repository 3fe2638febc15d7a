"""The SDK's ReviewService methods against the real server (SECURITY D1, D2)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.integration.accounts.channel_steps import BIND_PHONE, NEW_PHONE, register, ticket
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, PHONE
from tests.integration.review.steps import (
    PDF,
    REVIEWER,
    REVIEWER_PHONE,
    review_harness,
    reviewer_session,
    session_metadata,
)
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import (
    DownloadedDocument,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from xiaohe.identity.v1 import accounts_pb2, common_pb2, review_pb2


def token_of(metadata: tuple[tuple[str, str], ...]) -> str:
    """The bearer token in a console's metadata."""
    return dict(metadata)["authorization"].removeprefix("Bearer ")


async def test_a_reviewer_works_a_case_through_the_sdk(
    harness_factory: HarnessFactory, tmp_path: Path
) -> None:
    """D1, D2: list, read (masked, then revealed), download to memory and to a 0600 file,
    note and decide; refusals are typed errors."""
    h, docs = await review_harness(harness_factory)
    await register(h, LOGIN_NAME, PHONE)
    reviewer_id, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    token = token_of(console)
    document_id = await docs.add(docs.phone_owner(NEW_PHONE))  # uploaded with its ticket
    async with client_for(h) as identity:
        applied = await identity.change_phone(
            accounts_pb2.ChangePhoneRequest(
                identifier=LOGIN_NAME,
                new_phone=NEW_PHONE,
                new_phone_ticket=await ticket(h, NEW_PHONE, BIND_PHONE),
                manual_review=common_pb2.ManualReviewProof(document_ids=[document_id]),
            )
        )
        case_id = applied.review_case_id
        listed = await identity.list_cases(token, kind=review_pb2.CASE_KIND_PHONE_CHANGE)
        assert [c.case_id for c in listed.cases] == [case_id]

        case = await identity.get_case(token, case_id)
        assert {f.name: f.masked for f in case.fields}["new_phone"] is True
        case = await identity.get_case(token, case_id, reveal_fields=["new_phone"])
        assert {f.name: f.value for f in case.fields}["new_phone"] == NEW_PHONE

        in_memory = await identity.download_document(token, case_id, document_id)
        assert in_memory == DownloadedDocument("application/pdf", len(PDF), PDF)
        path = tmp_path / "scan.pdf"
        on_disk = await identity.download_document(token, case_id, document_id, to=path)
        assert (on_disk.content_type, on_disk.size, on_disk.content) == (
            "application/pdf",
            len(PDF),
            b"",
        )
        assert path.read_bytes() == PDF
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        missing = tmp_path / "missing.pdf"
        with pytest.raises(NotFound):
            await identity.download_document(token, case_id, "doc_not_in_case", to=missing)
        assert not missing.exists()

        await identity.add_note(token, case_id, "证件清晰")
        with pytest.raises(InvalidArgument):
            await identity.decide_case(token, case_id, review_pb2.DECISION_APPROVE, "")
        password_only = token_of(await session_metadata(h, reviewer_id, amr=("pwd",)))
        with pytest.raises(PermissionDenied):
            await identity.list_cases(password_only)
        decided = await identity.decide_case(token, case_id, review_pb2.DECISION_APPROVE, "一致")
        assert decided.state == review_pb2.CASE_STATE_APPROVED
        with pytest.raises(FailedPrecondition):
            await identity.decide_case(token, case_id, review_pb2.DECISION_REJECT, "再议")


async def test_a_stream_refused_before_its_first_byte_is_a_typed_error(h: Harness) -> None:
    """D2: StreamDocument without a reviewer token is UserUnauthenticated from the SDK."""
    from xiaohe.identity.client import UserUnauthenticated

    async with client_for(h) as identity:
        with pytest.raises(UserUnauthenticated):
            await identity.download_document("not-a-token", "case_x", "doc_x")
