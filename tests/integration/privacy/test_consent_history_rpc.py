"""Consent over time over real gRPC (issue 14): WithdrawConsent, ListConsents, and policy
versions that only notify (SECURITY I2, I3)."""

from __future__ import annotations

import grpc
import pytest

from tests.contract.faults import failing_writes, row_counts
from tests.document_samples import png_sample
from tests.integration.conftest import Harness, wait_for_outbox
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, register, stubs
from tests.integration.privacy.test_export_rpc import export, export_ticket, validate
from tests.integration.realname.test_realname_rpc import upload
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.flows.consent import POLICY_NOTICE_ACTION, WITHDRAW_ACTION
from xiaohe.identity.v1 import auth_pb2, privacy_pb2, privacy_pb2_grpc

NOTIFY_ONLY_POLICY = "小禾隐私政策（第二版）：仅修订联系方式，处理目的不变。"
PURPOSE_POLICY = "小禾隐私政策（第三版）：新增“企业服务推荐”用途。"
NOTIFY_AGAIN_POLICY = "小禾隐私政策（第四版）：仅修订文字。"


def privacy(h: Harness) -> privacy_pb2_grpc.PrivacyServiceAsyncStub:
    return privacy_pb2_grpc.PrivacyServiceStub(h.channel)  # type: ignore[return-value]


def bearer(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    return (*h.metadata, ("x-end-user-ip", "203.0.113.7"), ("authorization", f"Bearer {token}"))


async def failure(call: object) -> Details:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return details_of(caught.value)


async def sign_in(h: Harness) -> auth_pb2.LoginResponse:
    return await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
        ),
        metadata=h.metadata,
    )


async def test_withdrawing_the_documents_consent_is_listed_and_stops_uploads(
    h: Harness,
) -> None:
    """I2 (issue 14): ListConsents shows the history; WithdrawConsent of
    `identity_documents` appends a withdrawal (audited); an upload then needs the consent
    again (CONSENT_REQUIRED) and gives it anew; the privacy policy itself cannot be
    withdrawn (FAILED_PRECONDITION naming Deactivate); an unknown or empty purpose is
    INVALID_ARGUMENT on `purpose`."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    token = (await sign_in(h)).session.access_token
    h.clock.advance(5)  # the ledger lists by time
    await upload(h, token, png_sample())  # gives the separate consent
    h.clock.advance(5)

    withdrawn = await privacy(h).WithdrawConsent(
        privacy_pb2.WithdrawConsentRequest(purpose="identity_documents"),
        metadata=bearer(h, token),
    )
    listed = await privacy(h).ListConsents(
        privacy_pb2.ListConsentsRequest(), metadata=bearer(h, token)
    )
    assert [(c.purpose, c.action, c.channel) for c in listed.consents] == [
        ("privacy_policy", "grant", "registration"),
        ("identity_documents", "grant", "document_upload"),
        ("identity_documents", "withdraw", "withdrawal"),
    ]
    assert listed.consents[-1].consent_id == withdrawn.consent_id
    assert listed.consents[-1].policy_version == 1
    records = await h.container.audit.query(action=WITHDRAW_ACTION)
    assert [(r.target, r.outcome) for r in records] == [(account_id, "ok")]

    without = await failure(upload(h, token, png_sample(), consent=False))
    assert without.code == grpc.StatusCode.FAILED_PRECONDITION
    assert without.reason == "CONSENT_REQUIRED"
    h.clock.advance(5)
    await upload(h, token, png_sample(), consent=True)
    again = await privacy(h).ListConsents(
        privacy_pb2.ListConsentsRequest(), metadata=bearer(h, token)
    )
    assert [(c.purpose, c.action) for c in again.consents][-1] == ("identity_documents", "grant")

    policy = await failure(
        privacy(h).WithdrawConsent(
            privacy_pb2.WithdrawConsentRequest(purpose="privacy_policy"),
            metadata=bearer(h, token),
        )
    )
    assert policy.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "Deactivate" in policy.message
    assert "purpose" in policy.violations
    for purpose in ("", "marketing"):
        bad = await failure(
            privacy(h).WithdrawConsent(
                privacy_pb2.WithdrawConsentRequest(purpose=purpose), metadata=bearer(h, token)
            )
        )
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "purpose" in bad.violations
    unauthenticated = await failure(
        privacy(h).ListConsents(privacy_pb2.ListConsentsRequest(), metadata=h.metadata)
    )
    assert unauthenticated.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_notify_only_version_notifies_once_and_a_purpose_change_gates(
    h: Harness,
) -> None:
    """I3 (issue 14): a version published as changing no purpose does not gate sign-in; the
    next sign-in queues one `policy_updated` notice, records `notified` in the ledger and is
    audited; a second sign-in sends nothing more. A later version that changes purposes
    gates sign-in (CONSENT_REQUIRED); after accepting it, a further notify-only version is
    again only notified."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await wait_for_outbox(h, 1)
    h.clock.advance(5)  # the ledger lists by time
    policies = h.container.policies
    second = await policies.publish(NOTIFY_ONLY_POLICY, purposes_changed=False)
    assert (second.version, second.purposes_changed, second.consent_floor) == (2, False, 1)

    first = await sign_in(h)
    assert first.next_step == auth_pb2.NEXT_STEP_NONE
    lines = await wait_for_outbox(h, 2)
    assert len(lines) == 2
    assert "第2版" in lines[-1]["text"]
    assert lines[-1]["to"] == PHONE
    later = await sign_in(h)
    assert later.next_step == auth_pb2.NEXT_STEP_NONE
    await h.drain_outbox()
    assert len(h.outbox_lines()) == 2
    ledger = await h.container.consents.of_account(account_id)
    assert [(c.policy_version, c.action) for c in ledger] == [(1, "grant"), (2, "notified")]
    notices = await h.container.audit.query(action=POLICY_NOTICE_ACTION)
    assert [(r.target, r.outcome) for r in notices] == [(account_id, "ok")]

    h.clock.advance(5)
    third = await policies.publish(PURPOSE_POLICY)
    assert third.consent_floor == 3
    gated = await sign_in(h)
    assert gated.next_step == auth_pb2.NEXT_STEP_CONSENT_REQUIRED
    await privacy(h).AcceptPolicy(
        privacy_pb2.AcceptPolicyRequest(version=3), metadata=bearer(h, gated.session.access_token)
    )
    h.clock.advance(5)
    fourth = await policies.publish(NOTIFY_AGAIN_POLICY, purposes_changed=False)
    assert fourth.consent_floor == 3
    after = await sign_in(h)
    assert after.next_step == auth_pb2.NEXT_STEP_NONE
    lines = await wait_for_outbox(h, 3)
    assert "第4版" in lines[-1]["text"]
    # The export lists the notices in the consent history and still follows its schema.
    ticket = await export_ticket(h, PHONE)
    document, _ = await export(h, after.session.access_token, ticket)
    validate(document)
    assert [(c["policy_version"], c["action"]) for c in document["consents"]] == [
        (1, "grant"),
        (2, "notified"),
        (3, "grant"),
        (4, "notified"),
    ]


async def test_a_policy_notice_is_all_or_nothing_and_never_fails_the_sign_in(
    h: Harness,
) -> None:
    """F2, I7 (issue 14): when the notice cannot be queued (after the ledger's `notified`
    record is written) the sign-in still succeeds, and neither the record nor the audit
    record is kept; the next sign-in notifies."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await wait_for_outbox(h, 1)
    h.clock.advance(5)
    await h.container.policies.publish(NOTIFY_ONLY_POLICY, purposes_changed=False)
    before = await row_counts(h.container.database, "consents", "outbox")
    async with failing_writes(h.container.database, "outbox"):
        signed_in = await sign_in(h)
    assert signed_in.next_step == auth_pb2.NEXT_STEP_NONE
    after = await row_counts(h.container.database, "consents", "outbox")
    assert after == before
    assert await h.container.audit.query(action=POLICY_NOTICE_ACTION) == []

    await sign_in(h)
    lines = await wait_for_outbox(h, 2)
    assert "第2版" in lines[-1]["text"]
    records = await h.container.audit.query(action=POLICY_NOTICE_ACTION)
    assert [(r.target, r.outcome) for r in records] == [(account_id, "ok")]
