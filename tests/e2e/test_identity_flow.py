"""The whole identity flow against `xiaohe-identity serve`, as an integrator would run it.

register (natural and legal person) -> login by login name, phone, USCC and ID
number -> validate (RPC and an independent JWT library) -> refresh -> replay ->
logout -> invalid; plus identical failures and no personal data at rest or in logs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import grpc
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.e2e.conftest import ServedProcess, start_serve
from tests.rpc_errors import details_of
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
)

NATURAL_PHONE = "+8613812345678"
LEGAL_PHONE = "+8613987654321"
ID_NUMBER = "11010519491231002X"
USCC = "91350100M000100Y43"
PASSWORD = "Qingshan-Lvshui-2026"


class Flow:
    """Stubs and helpers over one served process."""

    def __init__(self, served: ServedProcess, channel: grpc.Channel) -> None:
        self.served = served
        self.md = served.metadata
        self.codes = codes_pb2_grpc.CodeServiceStub(channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.accounts = accounts_pb2_grpc.AccountServiceStub(channel)
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)

    def ticket(self, phone: str, purpose: int) -> str:
        before = len(self.served.outbox())
        self.codes.IssueCode(
            codes_pb2.IssueCodeRequest(
                channel=common_pb2.CHANNEL_SMS, destination=phone, purpose=purpose
            ),
            metadata=self.md,
            timeout=10,
        )
        deadline = time.monotonic() + 10
        while len(self.served.outbox()) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        line = self.served.outbox()[-1]
        assert line["to"] == phone
        code = re.search(r"\d{6}", line["text"])
        assert code is not None
        return self.codes.VerifyCode(
            codes_pb2.VerifyCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=phone,
                purpose=purpose,
                code=code.group(0),
            ),
            metadata=self.md,
            timeout=10,
        ).ticket

    def login(self, identifier: str, password: str = PASSWORD) -> auth_pb2.LoginResponse:
        return self.auth.Login(
            auth_pb2.LoginRequest(
                password=auth_pb2.PasswordCredential(identifier=identifier, password=password)
            ),
            metadata=self.md,
            timeout=10,
        )

    def login_error(self, identifier: str, password: str) -> tuple[object, ...]:
        with pytest.raises(grpc.RpcError) as caught:
            self.login(identifier, password)
        d = details_of(caught.value)  # type: ignore[arg-type]
        return (d.code, d.reason, d.message, d.violations, d.retry_after)

    def validate(self, token: str) -> auth_pb2.ValidateTokenResponse:
        return self.auth.ValidateToken(
            auth_pb2.ValidateTokenRequest(access_token=token), metadata=self.md, timeout=10
        )


def test_register_login_validate_refresh_replay_logout(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """Acceptance of accounts, login and tokens (P2, B3, T1, T2, T3, I1) end to end."""
    served = start_serve(tmp_path / "var", XIAOHE_IDENTITY_LOGIN_FAILURES_PER_ACCOUNT_IP="3")
    serve_factory.append(served)
    with grpc.insecure_channel(served.target) as channel:
        flow = Flow(served, channel)
        version = flow.privacy.GetPolicy(
            privacy_pb2.GetPolicyRequest(), metadata=flow.md, timeout=10
        ).version
        assert version == 1

        natural = flow.accounts.Register(
            accounts_pb2.RegisterRequest(
                subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
                login_name="zhang.wei",
                password=PASSWORD,
                phone="138 1234 5678",
                phone_ticket=flow.ticket(NATURAL_PHONE, common_pb2.PURPOSE_REGISTER),
                accepted_policy_version=version,
                natural_person=accounts_pb2.NaturalPersonProfile(
                    name="张伟",
                    id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
                    id_number="11010519491231002x",
                ),
            ),
            metadata=flow.md,
            timeout=10,
        )
        legal = flow.accounts.Register(
            accounts_pb2.RegisterRequest(
                subject_type=common_pb2.SUBJECT_TYPE_LEGAL_PERSON,
                login_name="fuzhou-tech",
                password=PASSWORD,
                phone=LEGAL_PHONE,
                phone_ticket=flow.ticket(LEGAL_PHONE, common_pb2.PURPOSE_REGISTER),
                accepted_policy_version=version,
                legal_person=accounts_pb2.LegalPersonProfile(
                    organization_name="福州示例科技有限公司", uscc=USCC
                ),
            ),
            metadata=flow.md,
            timeout=10,
        )

        for identifier, account in (
            ("zhang.wei", natural.account_id),
            (NATURAL_PHONE, natural.account_id),
            (ID_NUMBER, natural.account_id),
            ("ｆｕｚｈｏｕ-tech", legal.account_id),
            (USCC, legal.account_id),
        ):
            result = flow.login(identifier)
            assert result.session.account_id == account, identifier
            assert result.next_step == auth_pb2.NEXT_STEP_NONE

        # B3: unknown identifier, wrong password and a locked account look the same.
        unknown = flow.login_error("nobody.here", PASSWORD)
        wrong = flow.login_error("fuzhou-tech", "Wrong-Password-123")
        for _ in range(3):
            flow.login_error("zhang.wei", "Wrong-Password-123")
        locked = flow.login_error("zhang.wei", PASSWORD)
        assert unknown == wrong == locked
        assert unknown[0] == grpc.StatusCode.UNAUTHENTICATED

        session = flow.login(USCC).session
        valid = flow.validate(session.access_token)
        assert valid.valid
        assert valid.account_id == legal.account_id
        assert valid.subject_type == common_pb2.SUBJECT_TYPE_LEGAL_PERSON

        # T1: an independent JWT library verifies the token against the published JWKS.
        jwks = json.loads(
            flow.auth.GetSigningKeys(
                auth_pb2.GetSigningKeysRequest(), metadata=flow.md, timeout=10
            ).jwks_json
        )
        header = pyjwt.get_unverified_header(session.access_token)
        jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        public = pyjwt.PyJWK(jwk).key
        assert isinstance(public, Ed25519PublicKey)
        claims = pyjwt.decode(
            session.access_token, key=public, algorithms=["EdDSA"], audience="xiaohe-platform"
        )
        assert claims["sub"] == legal.account_id

        # T2: refresh rotates; replaying the old refresh token kills the session.
        rotated = flow.auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=session.refresh_token),
            metadata=flow.md,
            timeout=10,
        ).session
        assert rotated.refresh_token != session.refresh_token
        assert flow.validate(rotated.access_token).valid
        with pytest.raises(grpc.RpcError) as caught:
            flow.auth.Refresh(
                auth_pb2.RefreshRequest(refresh_token=session.refresh_token),
                metadata=flow.md,
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError):
            flow.auth.Refresh(
                auth_pb2.RefreshRequest(refresh_token=rotated.refresh_token),
                metadata=flow.md,
                timeout=10,
            )

        # T3: after Logout, ValidateToken says invalid within one second.
        other = flow.login(USCC).session
        assert flow.validate(other.access_token).valid
        flow.auth.Logout(
            auth_pb2.LogoutRequest(refresh_token=other.refresh_token), metadata=flow.md, timeout=10
        )
        deadline = time.monotonic() + 1.0
        while flow.validate(other.access_token).valid:
            assert time.monotonic() < deadline, "still valid one second after logout"
            time.sleep(0.05)

    assert served.stop() == 0
    # I1: no raw phone or ID number in the database file or the server's log.
    secrets_at_rest = [b"13812345678", b"13987654321", ID_NUMBER.encode()]
    for path in served.data_dir.glob("identity.db*"):
        data = path.read_bytes()
        for needle in secrets_at_rest:
            assert needle not in data, (path.name, needle)
    log = served.log_text().encode()
    for needle in secrets_at_rest:
        assert needle not in log
