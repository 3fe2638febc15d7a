"""PrivacyService.AcceptPolicy over real gRPC: consent to a changed policy (SECURITY I3).

After an operator publishes a new policy version, a login gives a restricted
session: business systems (ValidateToken, the SDK's TokenVerifier) and every RPC
about the user refuse it, except reading and accepting the policy. Accepting the
current version and refreshing turns it into a normal session.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, register, stubs
from tests.rpc_errors import Details, details_of
from xiaohe.identity.client.verifier import TokenVerifier
from xiaohe.identity.tokens.jwt import InvalidToken
from xiaohe.identity.v1 import (
    accounts_pb2,
    auth_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
)

NEW_POLICY = "小禾隐私政策（第二版）：新增“企业服务推荐”用途，详见第三条。"
END_USER_IP = "203.0.113.7"


def privacy(h: Harness) -> privacy_pb2_grpc.PrivacyServiceAsyncStub:
    """The PrivacyService stub on the harness channel."""
    return privacy_pb2_grpc.PrivacyServiceStub(h.channel)  # type: ignore[return-value]


def as_user(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """Client credentials, the end user's address and `authorization: Bearer <token>`."""
    return (*h.metadata, ("x-end-user-ip", END_USER_IP), ("authorization", f"Bearer {token}"))


async def failure(call: object) -> Details:
    """The decoded error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return details_of(caught.value)


async def password_login(h: Harness) -> auth_pb2.LoginResponse:
    """Login with the registered password."""
    return await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
        ),
        metadata=h.metadata,
    )


def verifier(h: Harness) -> TokenVerifier:
    """The SDK's local verifier, fed by GetSigningKeys over the harness channel."""

    async def fetch_jwks() -> str:
        reply = await stubs(h).auth.GetSigningKeys(
            auth_pb2.GetSigningKeysRequest(), metadata=h.metadata
        )
        return reply.jwks_json

    return TokenVerifier(
        fetch_jwks,
        audience=h.container.settings.default_audience,
        issuer=h.container.settings.token_issuer,
        clock=h.clock.now,
    )


async def test_consent_turns_a_restricted_session_into_a_normal_one(h: Harness) -> None:
    """I3: after a new policy version, login gives CONSENT_REQUIRED and a session that
    GetAccount, ListSessions, ValidateToken and the SDK verifier refuse; AcceptPolicy of the
    current version, then Refresh, gives a normal session; the consent row holds the version,
    client, masked IP, channel and time; the acceptance is audited."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await h.container.revocations.wait_ready()
    h.clock.advance(60)
    published = await h.container.policies.publish(NEW_POLICY)
    assert published.version == 2

    login = await password_login(h)
    assert login.next_step == auth_pb2.NEXT_STEP_CONSENT_REQUIRED
    restricted = login.session
    s = stubs(h)
    for call in (
        s.accounts.GetAccount(
            accounts_pb2.GetAccountRequest(), metadata=as_user(h, restricted.access_token)
        ),
        s.accounts.ListSessions(
            accounts_pb2.ListSessionsRequest(), metadata=as_user(h, restricted.access_token)
        ),
    ):
        d = await failure(call)
        assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CONSENT_REQUIRED")
    validated = await s.auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=restricted.access_token), metadata=h.metadata
    )
    assert validated == auth_pb2.ValidateTokenResponse(valid=False)
    with pytest.raises(InvalidToken) as caught:
        await verifier(h).verify(restricted.access_token)
    assert caught.value.reason == "restricted"

    # The restricted session may read the policy it is asked to accept, and accept it.
    policy = await privacy(h).GetPolicy(privacy_pb2.GetPolicyRequest(), metadata=h.metadata)
    assert (policy.version, policy.text) == (2, NEW_POLICY)
    accepted = await privacy(h).AcceptPolicy(
        privacy_pb2.AcceptPolicyRequest(version=policy.version),
        metadata=as_user(h, restricted.access_token),
    )
    assert accepted.accepted_version == 2

    refreshed = (
        await s.auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=restricted.refresh_token), metadata=h.metadata
        )
    ).session
    assert refreshed.session_id == restricted.session_id
    me = await s.accounts.GetAccount(
        accounts_pb2.GetAccountRequest(), metadata=as_user(h, refreshed.access_token)
    )
    assert (me.account.account_id, me.account.accepted_policy_version) == (account_id, 2)
    listed = await s.accounts.ListSessions(
        accounts_pb2.ListSessionsRequest(), metadata=as_user(h, refreshed.access_token)
    )
    assert [i.session_id for i in listed.sessions] == [restricted.session_id]
    validated = await s.auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=refreshed.access_token), metadata=h.metadata
    )
    assert (validated.valid, validated.account_id) == (True, account_id)
    assert (await verifier(h).verify(refreshed.access_token)).sub == account_id
    assert (await password_login(h)).next_step == auth_pb2.NEXT_STEP_NONE

    consents = await h.container.consents.of_account(account_id)
    assert [(c.policy_version, c.channel) for c in consents] == [
        (1, "registration"),
        (2, "consent"),
    ]
    client_id = dict(h.metadata)["x-client-id"]
    latest = consents[-1]
    assert (latest.client_id, latest.ip_masked, latest.purpose) == (
        client_id,
        "203.0.113.*",
        "privacy_policy",
    )
    assert latest.accepted_at == pytest.approx(h.clock.now(), abs=1)
    records = await h.container.audit.query(action="privacy.consent")
    assert [(r.target, r.outcome, r.actor_account) for r in records] == [
        (account_id, "ok", account_id)
    ]


async def test_only_the_current_version_can_be_accepted(h: Harness) -> None:
    """I3: accepting an older (or a future) version is FAILED_PRECONDITION naming the current
    one on `version`; version 0 is INVALID_ARGUMENT; without an access token it is
    UNAUTHENTICATED; nothing is recorded and the session stays restricted."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await h.container.policies.publish(NEW_POLICY)
    d = await failure(
        privacy(h).AcceptPolicy(privacy_pb2.AcceptPolicyRequest(version=2), metadata=h.metadata)
    )
    assert (d.code, d.reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_UNAUTHENTICATED")
    restricted = (await password_login(h)).session
    for version in (1, 3):
        d = await failure(
            privacy(h).AcceptPolicy(
                privacy_pb2.AcceptPolicyRequest(version=version),
                metadata=as_user(h, restricted.access_token),
            )
        )
        assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION")
        assert d.violations == {"version": "must be the current version 2"}
        assert "version 2" in d.message
    d = await failure(
        privacy(h).AcceptPolicy(
            privacy_pb2.AcceptPolicyRequest(version=0),
            metadata=as_user(h, restricted.access_token),
        )
    )
    assert (d.code, set(d.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {"version"})
    assert [c.policy_version for c in await h.container.consents.of_account(account_id)] == [1]
    refreshed = (
        await stubs(h).auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=restricted.refresh_token), metadata=h.metadata
        )
    ).session
    d = await failure(
        stubs(h).accounts.GetAccount(
            accounts_pb2.GetAccountRequest(), metadata=as_user(h, refreshed.access_token)
        )
    )
    assert d.reason == "CONSENT_REQUIRED"
    outcomes = [r.outcome for r in await h.container.audit.query(action="privacy.consent")]
    assert outcomes == ["failed_precondition", "failed_precondition"]
