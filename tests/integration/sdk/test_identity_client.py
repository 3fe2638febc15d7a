"""IdentityClient against the real in-process server: calls, metadata and typed errors."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.integration.conftest import Harness, wait_for_outbox
from xiaohe.identity.client import (
    Channel,
    ClientUnauthenticated,
    CodeInvalid,
    EndUser,
    IdentityClient,
    IdentityError,
    InvalidArgument,
    InvalidToken,
    PermissionDenied,
    Purpose,
    RateLimited,
    SubjectType,
    TicketInvalid,
    TokenInvalid,
    Unavailable,
    UserUnauthenticated,
)
from xiaohe.identity.server import context
from xiaohe.identity.server.audit.checkpoints import anchor_text
from xiaohe.identity.v1 import accounts_pb2, auth_pb2

PHONE = "+8613800138000"
SMS = Channel.CHANNEL_SMS
REGISTER = Purpose.PURPOSE_REGISTER


def client_for(h: Harness, **kwargs: Any) -> IdentityClient:
    """An IdentityClient on the harness channel with the all-grants client's credentials."""
    creds = dict(h.metadata)
    kwargs.setdefault("channel", h.channel)
    return IdentityClient(
        f"127.0.0.1:{h.running.port}",
        client_id=creds["x-client-id"],
        client_secret=creds["x-client-secret"],
        **kwargs,
    )


def code_from(line: dict[str, str]) -> str:
    match = re.search(r"\d{6}", line["text"])
    assert match, "the message text holds the code"
    return match.group(0)


async def test_issue_and_verify_a_code(h: Harness) -> None:
    async with client_for(h) as identity:
        issued = await identity.issue_code(SMS, PHONE, REGISTER)
        assert issued.code_id
        assert issued.expires_in_seconds == 300
        assert issued.resend_after_seconds == 60
        lines = await wait_for_outbox(h, 1)
        assert [line["to"] for line in lines] == [PHONE]
        code = code_from(lines[0])
        wrong = "000000" if code != "000000" else "111111"
        with pytest.raises(CodeInvalid) as caught:
            await identity.verify_code(SMS, PHONE, REGISTER, wrong)
        assert "code" in caught.value.violations
        verified = await identity.verify_code(SMS, PHONE, REGISTER, code)
    assert verified.ticket.startswith("vt1.")
    assert verified.expires_in_seconds > 0


async def test_server_errors_arrive_typed(h: Harness) -> None:
    """RateLimited with its delay, InvalidArgument with violations, wrong or weak clients."""
    async with client_for(h) as identity:
        await identity.issue_code(SMS, PHONE, REGISTER)
        with pytest.raises(RateLimited) as limited:
            await identity.issue_code(SMS, PHONE, REGISTER)
        err = limited.value
        assert isinstance(err, IdentityError)
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.reason == "RATE_LIMITED"
        assert err.retry_after is not None
        assert 0 < err.retry_after <= 60
        assert err.quota_subjects == ("code.issue.destination",)
        assert err.request_id
        h.clock.advance(err.retry_after + 1)
        await identity.issue_code(SMS, PHONE, REGISTER)

        with pytest.raises(InvalidArgument) as invalid:
            await identity.issue_code(SMS, "12345", REGISTER)
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(invalid.value.violations) == {"destination"}
        assert invalid.value.violations["destination"]
        assert invalid.value.retry_after is None

    async with IdentityClient(
        "unused", client_id="xhc_nope", client_secret="xhs_nope", channel=h.channel
    ) as stranger:
        with pytest.raises(ClientUnauthenticated) as unauthenticated:
            await stranger.issue_code(SMS, "+8613900139000", REGISTER)
    assert unauthenticated.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert unauthenticated.value.request_id

    creds = dict(await h.client_metadata("validate"))
    async with IdentityClient(
        "unused",
        client_id=creds["x-client-id"],
        client_secret=creds["x-client-secret"],
        channel=h.channel,
    ) as validator:
        with pytest.raises(PermissionDenied):
            await validator.issue_code(SMS, "+8613900139000", REGISTER)
    assert len(await wait_for_outbox(h, 2)) == 2  # the two issues that succeeded, no more


async def test_end_user_metadata_is_forwarded_and_overridable_per_call(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default EndUser goes with every call; `end_user=` replaces it for one call."""
    seen: list[tuple[str, str, str]] = []
    original: Callable[..., Awaitable[Any]] = h.container.codes.issue

    async def recording_issue(*args: Any, **kwargs: Any) -> Any:
        rc = context.current()
        seen.append((rc.end_user_ip, rc.end_user_agent, rc.device_id))
        return await original(*args, **kwargs)

    monkeypatch.setattr(h.container.codes, "issue", recording_issue)
    default = EndUser(ip="203.0.113.7", user_agent="Mozilla/5.0 (测试)", device_id="dev-1")
    async with client_for(h, end_user=default) as identity:
        await identity.issue_code(SMS, PHONE, REGISTER)
        await identity.issue_code(
            SMS, "+8613900139000", REGISTER, end_user=EndUser(ip="198.51.100.2")
        )
    assert seen == [
        ("203.0.113.7", "Mozilla/5.0 (??)", "dev-1"),
        ("198.51.100.2", "", ""),
    ]


async def test_admin_calls_over_a_channel_the_client_owns(h: Harness) -> None:
    """Without `channel=` the client opens its own, and closes it on exit."""
    identity = client_for(h, channel=None)
    async with identity:
        created = await identity.create_client("orders", ["validate"])
        assert created.client_secret
        assert list(created.client.grants) == ["validate"]
        client_id = created.client.client_id
        listed = await identity.list_clients()
        assert {"integration", "orders"} <= {c.name for c in listed.clients}
        revoked = await identity.revoke_client(client_id)
        assert revoked.client.revoked
    with pytest.raises(RuntimeError):
        await identity.list_clients()
    async with IdentityClient(
        "unused", client_id=client_id, client_secret=created.client_secret, channel=h.channel
    ) as orders:
        with pytest.raises(ClientUnauthenticated):
            await orders.validate_token("x")


async def test_an_unreachable_server_is_unavailable_without_retry_delay() -> None:
    async with IdentityClient(
        "127.0.0.1:1", client_id="xhc_x", client_secret="xhs_x", timeout=5.0
    ) as identity:
        with pytest.raises(Unavailable) as caught:
            await identity.issue_code(SMS, PHONE, REGISTER)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.retry_after is None


async def test_constructor_and_argument_checks() -> None:
    with pytest.raises(ValueError, match="client_id"):
        IdentityClient("x", client_id="", client_secret="s")
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        IdentityClient("x", client_id="xhc_1", client_secret="xhs_秘密")
    assert "秘密" not in str(caught.value)
    assert IdentityClient("x", client_id="xhc_1\n", client_secret=" xhs_2 ")._metadata(
        None, None
    ) == (("x-client-id", "xhc_1"), ("x-client-secret", "xhs_2"))
    identity = IdentityClient("127.0.0.1:1", client_id="xhc_c", client_secret="xhs_topsecret")
    assert "topsecret" not in repr(identity)
    with pytest.raises(ValueError, match="exactly one"):
        await identity.logout()
    with pytest.raises(ValueError, match="exactly one"):
        await identity.logout(refresh_token="r", access_token="a")
    with pytest.raises(TypeError):
        await identity.register(accounts_pb2.RegisterRequest(), login_name="alice")
    await identity.close()


# The flows below need AuthService, AccountService and PrivacyService on the server.

PASSWORD = "Qingshan-Rivers-2024"


async def register_alice(h: Harness, identity: IdentityClient) -> str:
    """Register an account through the SDK as a front end would; returns its id."""
    await identity.issue_code(SMS, PHONE, REGISTER)
    code = code_from((await wait_for_outbox(h, 1))[0])
    ticket = (await identity.verify_code(SMS, PHONE, REGISTER, code)).ticket
    policy = await identity.get_policy()
    assert policy.version > 0
    assert policy.text
    registered = await identity.register(
        subject_type=SubjectType.SUBJECT_TYPE_NATURAL_PERSON,
        login_name="alice_wang",
        password=PASSWORD,
        phone_ticket=ticket,
        phone=PHONE,
        accepted_policy_version=policy.version,
    )
    assert registered.account_id
    with pytest.raises(TicketInvalid):
        await identity.register(
            subject_type=SubjectType.SUBJECT_TYPE_NATURAL_PERSON,
            login_name="alice_again",
            password=PASSWORD,
            phone_ticket=ticket,
            phone=PHONE,
            accepted_policy_version=policy.version,
        )
    return registered.account_id


async def test_register_login_validate_refresh_logout(h: Harness) -> None:
    """The integrator guide's walk-through, end to end, with its revocation caveat."""
    async with client_for(h, end_user=EndUser(ip="203.0.113.7", user_agent="sdk-test")) as identity:
        account_id = await register_alice(h, identity)

        login = await identity.login_with_password("alice_wang", PASSWORD)
        session = login.session
        assert session.account_id == account_id
        assert login.next_step == auth_pb2.NEXT_STEP_NONE
        assert session.access_token_expires_in_seconds == 600

        verifier = identity.token_verifier("xiaohe-platform", clock=h.clock.now)
        claims = await verifier.verify(session.access_token)
        assert claims.sub == account_id
        assert claims.sid == session.session_id
        with pytest.raises(InvalidToken):
            await identity.token_verifier("biz.other", clock=h.clock.now).verify(
                session.access_token
            )

        remote = await identity.validate_token(session.access_token)
        assert remote.valid
        assert remote.account_id == account_id
        assert remote.subject_type == SubjectType.SUBJECT_TYPE_NATURAL_PERSON

        me = await identity.get_account(session.access_token)
        assert me.account.account_id == account_id
        assert me.account.login_name == "alice_wang"
        assert PHONE[-4:] in me.account.phone_masked
        assert PHONE not in me.account.phone_masked
        sessions = await identity.list_sessions(session.access_token)
        assert [s.session_id for s in sessions.sessions] == [session.session_id]
        assert sessions.sessions[0].current

        refreshed = (await identity.refresh(session.refresh_token)).session
        assert refreshed.refresh_token != session.refresh_token
        assert refreshed.session_id == session.session_id
        await verifier.verify(refreshed.access_token)

        await identity.logout(refresh_token=refreshed.refresh_token)
        # ValidateToken sees the logout; local verification cannot, until the token expires.
        assert not (await identity.validate_token(refreshed.access_token)).valid
        assert (await verifier.verify(refreshed.access_token)).sid == session.session_id
        with pytest.raises(UserUnauthenticated):
            await identity.get_account(refreshed.access_token)
        with pytest.raises(TokenInvalid):
            await identity.refresh(refreshed.refresh_token)
        h.clock.advance(600 + 30)  # past exp and the verifier's default leeway
        with pytest.raises(InvalidToken):
            await verifier.verify(refreshed.access_token)


async def test_sessions_of_the_signed_in_user(h: Harness) -> None:
    """Bearer metadata on "me" calls; one session revokes another."""
    async with client_for(h) as identity:
        for garbage in ("not-a-token", "bad\ntoken", "令牌"):
            with pytest.raises(UserUnauthenticated) as caught:
                await identity.list_sessions(garbage)
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED

        await register_alice(h, identity)
        first = (await identity.login_with_password("alice_wang", PASSWORD)).session
        second = (await identity.login_with_password(PHONE, PASSWORD)).session
        listed = await identity.list_sessions(second.access_token)
        assert {s.session_id for s in listed.sessions} == {first.session_id, second.session_id}
        await identity.revoke_session(second.access_token, first.session_id)
        assert not (await identity.validate_token(first.access_token)).valid
        assert (await identity.validate_token(second.access_token)).valid
        await identity.logout(access_token=second.access_token)
        assert not (await identity.validate_token(second.access_token)).valid


async def test_change_password_ends_the_other_sessions_unless_told_not_to(h: Harness) -> None:
    """T3: `change_password` ends the other sessions by default (it sends keep_other_sessions
    false); `end_other_sessions=False` keeps them."""
    async with client_for(h) as identity:
        await register_alice(h, identity)
        mine = (await identity.login_with_password("alice_wang", PASSWORD)).session
        other = (await identity.login_with_password(PHONE, PASSWORD)).session
        second, third = "Baiyun-Huangshan-2028", "Yunshan-Changjiang-2027"
        kept = await identity.change_password(
            mine.access_token, PASSWORD, second, end_other_sessions=False
        )
        assert kept.sessions_ended == 0
        assert (await identity.validate_token(other.access_token)).valid
        ended = await identity.change_password(mine.access_token, second, third)
        assert ended.sessions_ended == 1
        await h.container.revocations.wait_ready()
        assert (await identity.validate_token(mine.access_token)).valid
        with pytest.raises(TokenInvalid):
            await identity.refresh(other.refresh_token)


async def test_the_sdk_verifies_the_audit_chain_with_an_anchor(h: Harness) -> None:
    """I7: VerifyAuditChain through the SDK, with and without an anchor from the log."""
    async with client_for(h) as client:
        await client.create_client("web-1", ["codes"])
        checkpoint = await h.container.audit.checkpoint()
        assert checkpoint is not None
        report = await client.verify_audit_chain()
        assert (report.intact, report.checkpoints_checked) == (True, 1)
        anchored = await client.verify_audit_chain(
            anchor_seq=checkpoint.seq, anchor_mac=anchor_text(checkpoint.mac)
        )
        assert anchored.intact
        wrong = await client.verify_audit_chain(anchor_seq=checkpoint.seq, anchor_mac="0" * 64)
        assert not wrong.intact
        assert wrong.first_broken_seq == checkpoint.seq
