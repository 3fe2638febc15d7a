"""`IdentityClient`: the async SDK over the Xiaohe Identity gRPC API.

One method per RPC, returning the generated response message. Every call
carries the client credentials (`x-client-id` / `x-client-secret`), the
forwarded end-user metadata when there is an end user, the end user's access
token as `authorization: Bearer …` for RPCs about "me", and a deadline; a failed
call raises the typed error of `xiaohe.identity.client.errors`, never a raw
`grpc.RpcError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar

import grpc

from xiaohe.identity.client.errors import from_rpc_error
from xiaohe.identity.client.verifier import TokenVerifier
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    carriers_pb2,
    carriers_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
    directory_pb2,
    directory_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    realname_pb2,
    realname_pb2_grpc,
    recovery_pb2,
    recovery_pb2_grpc,
    review_pb2,
    review_pb2_grpc,
)
from xiaohe.identity.v1.auth_pb2 import NextStep
from xiaohe.identity.v1.common_pb2 import Channel, IdentifierKind, IdType, Purpose, SubjectType
from xiaohe.identity.v1.directory_pb2 import IdentityField
from xiaohe.identity.v1.realname_pb2 import DocumentKind, RealNameState

if TYPE_CHECKING:
    from xiaohe.identity.v1.accounts_pb2_grpc import AccountServiceAsyncStub
    from xiaohe.identity.v1.admin_pb2_grpc import AdminServiceAsyncStub
    from xiaohe.identity.v1.auth_pb2_grpc import AuthServiceAsyncStub
    from xiaohe.identity.v1.carriers_pb2_grpc import CarrierHookServiceAsyncStub
    from xiaohe.identity.v1.codes_pb2_grpc import CodeServiceAsyncStub
    from xiaohe.identity.v1.directory_pb2_grpc import DirectoryServiceAsyncStub
    from xiaohe.identity.v1.privacy_pb2_grpc import PrivacyServiceAsyncStub
    from xiaohe.identity.v1.realname_pb2_grpc import RealNameServiceAsyncStub
    from xiaohe.identity.v1.recovery_pb2_grpc import RecoveryServiceAsyncStub
    from xiaohe.identity.v1.review_pb2_grpc import ReviewServiceAsyncStub

__all__ = [
    "Channel",
    "DocumentKind",
    "DownloadedDocument",
    "EndUser",
    "IdType",
    "IdentifierKind",
    "IdentityClient",
    "IdentityField",
    "NextStep",
    "Purpose",
    "RealNameState",
    "SubjectType",
]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

Metadata = tuple[tuple[str, str], ...]

FieldName: TypeAlias = "str | IdentityField.ValueType"
"""An identity field: its name (`"login_name"`, `"phone"`, ...) or its IdentityField value."""


def _identity_fields(fields: Sequence[FieldName]) -> list[IdentityField.ValueType]:
    """IdentityField values of names or values; ValueError for an unknown name."""
    out: list[IdentityField.ValueType] = []
    for f in fields:
        if isinstance(f, str):
            try:
                out.append(IdentityField.Value("IDENTITY_FIELD_" + f.upper()))
            except ValueError:
                raise ValueError(f"unknown identity field {f!r}") from None
        else:
            out.append(f)
    return out


UPLOAD_CHUNK_BYTES = 32 * 1024
"""Bytes per message of an upload: well under the server's 64 KiB request-message cap."""


def _header_value(value: str) -> str:
    """`value` as a valid ASCII metadata value: non-printable characters become '?'.

    gRPC refuses a call whose metadata holds anything else with an internal
    exception rather than a status, so values that come from outside (a user
    agent, a bearer token a browser sent) are made legal first.
    """
    return "".join(ch if " " <= ch <= "~" else "?" for ch in value).strip()


def _is_header_value(value: str) -> bool:
    return bool(value) and all(" " <= ch <= "~" for ch in value)


@dataclass(frozen=True, slots=True)
class EndUser:
    """The end user a front end acts for, forwarded as `x-end-user-*` / `x-device-id` metadata.

    The server believes these only from clients granted `forward-end-user`; for any
    other client the caller's own address counts as the end user's, for per-IP
    limits and audit. Values are sent as ASCII header values: characters outside
    printable ASCII (e.g. in an exotic user agent) are replaced by '?'.
    """

    ip: str = ""
    user_agent: str = ""
    device_id: str = ""

    def metadata(self) -> Metadata:
        """The metadata pairs for the fields that are set."""
        pairs = (
            ("x-end-user-ip", self.ip),
            ("x-end-user-agent", self.user_agent),
            ("x-device-id", self.device_id),
        )
        return tuple((key, _header_value(value)) for key, value in pairs if value)


@dataclass(frozen=True, slots=True)
class _Stubs:
    codes: CodeServiceAsyncStub
    auth: AuthServiceAsyncStub
    accounts: AccountServiceAsyncStub
    privacy: PrivacyServiceAsyncStub
    recovery: RecoveryServiceAsyncStub
    admin: AdminServiceAsyncStub
    carriers: CarrierHookServiceAsyncStub
    review: ReviewServiceAsyncStub
    realname: RealNameServiceAsyncStub
    directory: DirectoryServiceAsyncStub


@dataclass(frozen=True, slots=True)
class DownloadedDocument:
    """A document a reviewer read with `download_document`: its type, size and bytes
    (empty when written to a file)."""

    content_type: str
    size: int
    content: bytes = field(repr=False)


class IdentityClient:
    """Async client of Xiaohe Identity; use as `async with IdentityClient(...) as identity:`.

    `target` is the server address (e.g. "127.0.0.1:50051"). Without `channel` the
    client opens its own, TLS when `credentials` are given (use TLS for anything
    that leaves the host: the client secret travels in every call), and closes it
    on exit; a `channel` passed in belongs to the caller and is left open.
    `timeout` is the deadline of every call in seconds (for a shorter one, wrap
    the call in `asyncio.timeout`: cancelling the task cancels the RPC).
    `end_user` is the default end user of every call; each method overrides it
    with `end_user=` (pass `EndUser()` to send none).
    """

    def __init__(
        self,
        target: str,
        *,
        client_id: str,
        client_secret: str,
        channel: grpc.aio.Channel | None = None,
        timeout: float = 10.0,
        end_user: EndUser | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        client_id, client_secret = client_id.strip(), client_secret.strip()
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required")
        if not (_is_header_value(client_id) and _is_header_value(client_secret)):
            raise ValueError("client_id and client_secret must be printable ASCII")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._target = target
        self._credentials = credentials
        self._client_metadata: Metadata = (
            ("x-client-id", client_id),
            ("x-client-secret", client_secret),
        )
        self._timeout = timeout
        self._end_user = end_user if end_user is not None else EndUser()
        self._channel = channel
        self._owns_channel = channel is None
        self._stubs: _Stubs | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"IdentityClient(target={self._target!r}, client_id={self._client_metadata[0][1]!r})"

    async def __aenter__(self) -> Self:
        self._ensure_stubs()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel if this client opened it; later calls raise RuntimeError."""
        self._closed = True
        self._stubs = None
        if self._owns_channel and self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(None)

    def _ensure_stubs(self) -> _Stubs:
        if self._closed:
            raise RuntimeError("this IdentityClient is closed")
        if self._stubs is None:
            if self._channel is None:
                # Opened lazily so the channel binds to the event loop that uses it.
                self._channel = (
                    grpc.aio.secure_channel(self._target, self._credentials)
                    if self._credentials is not None
                    else grpc.aio.insecure_channel(self._target)
                )
            channel = self._channel
            self._stubs = _Stubs(
                codes=codes_pb2_grpc.CodeServiceStub(channel),
                auth=auth_pb2_grpc.AuthServiceStub(channel),
                accounts=accounts_pb2_grpc.AccountServiceStub(channel),
                privacy=privacy_pb2_grpc.PrivacyServiceStub(channel),
                recovery=recovery_pb2_grpc.RecoveryServiceStub(channel),
                admin=admin_pb2_grpc.AdminServiceStub(channel),
                carriers=carriers_pb2_grpc.CarrierHookServiceStub(channel),
                review=review_pb2_grpc.ReviewServiceStub(channel),
                realname=realname_pb2_grpc.RealNameServiceStub(channel),
                directory=directory_pb2_grpc.DirectoryServiceStub(channel),
            )
        return self._stubs

    def _metadata(self, end_user: EndUser | None, access_token: str | None) -> Metadata:
        user = end_user if end_user is not None else self._end_user
        metadata = self._client_metadata + user.metadata()
        if access_token is not None:
            # A malformed token still reaches the server, which answers USER_UNAUTHENTICATED.
            metadata += (("authorization", f"Bearer {_header_value(access_token)}"),)
        return metadata

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        *,
        end_user: EndUser | None,
        access_token: str | None = None,
    ) -> _Response:
        """Call `method` with credentials, metadata and deadline; grpc errors become typed ones."""
        try:
            return await method(
                request,
                timeout=self._timeout,
                metadata=self._metadata(end_user, access_token),
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # CodeService

    async def issue_code(
        self,
        channel: int,
        destination: str,
        purpose: int,
        *,
        end_user: EndUser | None = None,
    ) -> codes_pb2.IssueCodeResponse:
        """Send a fresh code to `destination` over `channel` (e.g. `Channel.CHANNEL_SMS`)."""
        request = codes_pb2.IssueCodeRequest(
            channel=common_pb2.Channel.ValueType(channel),
            destination=destination,
            purpose=common_pb2.Purpose.ValueType(purpose),
        )
        stubs = self._ensure_stubs()
        return await self._unary(stubs.codes.IssueCode, request, end_user=end_user)

    async def verify_code(
        self,
        channel: int,
        destination: str,
        purpose: int,
        code: str,
        *,
        end_user: EndUser | None = None,
    ) -> codes_pb2.VerifyCodeResponse:
        """Check a code; the response's single-use `ticket` proves control of the destination."""
        request = codes_pb2.VerifyCodeRequest(
            channel=common_pb2.Channel.ValueType(channel),
            destination=destination,
            purpose=common_pb2.Purpose.ValueType(purpose),
            code=code,
        )
        stubs = self._ensure_stubs()
        return await self._unary(stubs.codes.VerifyCode, request, end_user=end_user)

    # AuthService

    async def login_with_password(
        self,
        identifier: str,
        password: str,
        kind: int = IdentifierKind.IDENTIFIER_KIND_UNSPECIFIED,
        audience: str = "",
        *,
        end_user: EndUser | None = None,
    ) -> auth_pb2.LoginResponse:
        """Sign in by identifier and password; `kind` UNSPECIFIED: classified by shape."""
        request = auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(
                identifier=identifier,
                identifier_kind=common_pb2.IdentifierKind.ValueType(kind),
                password=password,
            ),
            audience=audience,
        )
        stubs = self._ensure_stubs()
        return await self._unary(stubs.auth.Login, request, end_user=end_user)

    async def login_with_sms_ticket(
        self,
        ticket: str,
        audience: str = "",
        *,
        end_user: EndUser | None = None,
    ) -> auth_pb2.LoginResponse:
        """Sign in with a ticket from `verify_code` (SMS, `Purpose.PURPOSE_LOGIN`)."""
        request = auth_pb2.LoginRequest(sms_ticket=ticket, audience=audience)
        stubs = self._ensure_stubs()
        return await self._unary(stubs.auth.Login, request, end_user=end_user)

    async def refresh(
        self,
        refresh_token: str,
        audience: str = "",
        *,
        end_user: EndUser | None = None,
    ) -> auth_pb2.RefreshResponse:
        """Exchange a refresh token for a new pair; the old refresh token stops working."""
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token, audience=audience)
        stubs = self._ensure_stubs()
        return await self._unary(stubs.auth.Refresh, request, end_user=end_user)

    async def logout(
        self,
        *,
        refresh_token: str | None = None,
        access_token: str | None = None,
        end_user: EndUser | None = None,
    ) -> auth_pb2.LogoutResponse:
        """End the session of exactly one of `refresh_token` or `access_token`."""
        if refresh_token is not None and access_token is None:
            request = auth_pb2.LogoutRequest(refresh_token=refresh_token)
        elif access_token is not None and refresh_token is None:
            request = auth_pb2.LogoutRequest(access_token=access_token)
        else:
            raise ValueError("pass exactly one of refresh_token or access_token")
        stubs = self._ensure_stubs()
        return await self._unary(stubs.auth.Logout, request, end_user=end_user)

    async def complete_mfa(
        self,
        mfa_ticket: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        end_user: EndUser | None = None,
    ) -> auth_pb2.CompleteMfaResponse:
        """Finish a login that answered `NEXT_STEP_MFA_REQUIRED` with exactly one of a TOTP code
        or a recovery code; a wrong one raises `InvalidCredentials` (and counts like a wrong
        password), a spent or foreign ticket `TicketInvalid`."""
        if totp_code is not None and recovery_code is None:
            request = auth_pb2.CompleteMfaRequest(mfa_ticket=mfa_ticket, totp_code=totp_code)
        elif recovery_code is not None and totp_code is None:
            request = auth_pb2.CompleteMfaRequest(
                mfa_ticket=mfa_ticket, recovery_code=recovery_code
            )
        else:
            raise ValueError("pass exactly one of totp_code or recovery_code")
        stubs = self._ensure_stubs()
        return await self._unary(stubs.auth.CompleteMfa, request, end_user=end_user)

    async def validate_token(
        self,
        access_token: str,
        audience: str = "",
        *,
        required_auth_methods: Sequence[str] = (),
        end_user: EndUser | None = None,
    ) -> auth_pb2.ValidateTokenResponse:
        """Check an access token remotely: signature, expiry, audience and revocation; `valid`
        is False too when the session lacks one of `required_auth_methods` (e.g. "otp")."""
        request = auth_pb2.ValidateTokenRequest(
            access_token=access_token,
            audience=audience,
            required_auth_methods=list(required_auth_methods),
        )
        stubs = self._ensure_stubs()
        return await self._unary(stubs.auth.ValidateToken, request, end_user=end_user)

    async def get_signing_keys(self, *, end_user: EndUser | None = None) -> str:
        """The JWKS (JSON text) of the keys that sign access tokens."""
        stubs = self._ensure_stubs()
        response = await self._unary(
            stubs.auth.GetSigningKeys,
            auth_pb2.GetSigningKeysRequest(),
            end_user=end_user,
        )
        return response.jwks_json

    def token_verifier(self, audience: str, **kwargs: Any) -> TokenVerifier:
        """A `TokenVerifier` for `audience`, fetching keys through `get_signing_keys`.

        `kwargs` go to `TokenVerifier` (issuer, leeway, min_refetch_interval, …).
        The verifier refetches keys through this client, so keep the client open
        while the verifier is in use.
        """
        return TokenVerifier(self.get_signing_keys, audience=audience, **kwargs)

    # AccountService

    async def register(
        self,
        request: accounts_pb2.RegisterRequest | None = None,
        /,
        *,
        subject_type: int | None = None,
        login_name: str | None = None,
        password: str | None = None,
        phone_ticket: str | None = None,
        phone: str | None = None,
        accepted_policy_version: int | None = None,
        natural_person: accounts_pb2.NaturalPersonProfile | None = None,
        legal_person: accounts_pb2.LegalPersonProfile | None = None,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.RegisterResponse:
        """Create an account: pass a `RegisterRequest`, or its fields as keyword arguments."""
        fields_given = any(
            value is not None
            for value in (
                subject_type,
                login_name,
                password,
                phone_ticket,
                phone,
                accepted_policy_version,
                natural_person,
                legal_person,
            )
        )
        if request is not None and fields_given:
            raise TypeError("pass a RegisterRequest or its fields, not both")
        if natural_person is not None and legal_person is not None:
            raise ValueError("pass natural_person or legal_person, not both")
        if request is None:
            request = accounts_pb2.RegisterRequest(
                subject_type=common_pb2.SubjectType.ValueType(subject_type or 0),
                login_name=login_name or "",
                password=password or "",
                phone_ticket=phone_ticket or "",
                phone=phone or "",
                accepted_policy_version=accepted_policy_version or 0,
                natural_person=natural_person,
                legal_person=legal_person,
            )
        stubs = self._ensure_stubs()
        return await self._unary(stubs.accounts.Register, request, end_user=end_user)

    async def get_account(
        self,
        access_token: str,
        *,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.GetAccountResponse:
        """The signed-in user's own account (masked phone and email)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.GetAccount,
            accounts_pb2.GetAccountRequest(),
            end_user=end_user,
            access_token=access_token,
        )

    async def list_sessions(
        self,
        access_token: str,
        *,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.ListSessionsResponse:
        """The signed-in user's active sessions."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.ListSessions,
            accounts_pb2.ListSessionsRequest(),
            end_user=end_user,
            access_token=access_token,
        )

    async def revoke_session(
        self,
        access_token: str,
        session_id: str,
        *,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.RevokeSessionResponse:
        """End one of the signed-in user's sessions."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.RevokeSession,
            accounts_pb2.RevokeSessionRequest(session_id=session_id),
            end_user=end_user,
            access_token=access_token,
        )

    async def enroll_totp(
        self,
        access_token: str,
        password: str,
        *,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.EnrollTotpResponse:
        """Start TOTP enrolment (the current password again): an otpauth URI and its QR code
        (PNG). Not active until `confirm_totp`; `FailedPrecondition` if TOTP is already on."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.EnrollTotp,
            accounts_pb2.EnrollTotpRequest(password=password),
            end_user=end_user,
            access_token=access_token,
        )

    async def confirm_totp(
        self,
        access_token: str,
        code: str,
        *,
        end_user: EndUser | None = None,
    ) -> list[str]:
        """Turn TOTP on with the app's first code; returns the ten recovery codes (shown once)."""
        stubs = self._ensure_stubs()
        response = await self._unary(
            stubs.accounts.ConfirmTotp,
            accounts_pb2.ConfirmTotpRequest(code=code),
            end_user=end_user,
            access_token=access_token,
        )
        return list(response.recovery_codes)

    async def disable_totp(
        self,
        access_token: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        end_user: EndUser | None = None,
    ) -> None:
        """Turn TOTP off with exactly one of a current code or a recovery code."""
        if totp_code is not None and recovery_code is None:
            request = accounts_pb2.DisableTotpRequest(totp_code=totp_code)
        elif recovery_code is not None and totp_code is None:
            request = accounts_pb2.DisableTotpRequest(recovery_code=recovery_code)
        else:
            raise ValueError("pass exactly one of totp_code or recovery_code")
        stubs = self._ensure_stubs()
        await self._unary(
            stubs.accounts.DisableTotp, request, end_user=end_user, access_token=access_token
        )

    async def change_password(
        self,
        access_token: str,
        current_password: str,
        new_password: str,
        *,
        end_other_sessions: bool = True,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.ChangePasswordResponse:
        """Change the signed-in user's password (ending their other sessions by default)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.ChangePassword,
            accounts_pb2.ChangePasswordRequest(
                current_password=current_password,
                new_password=new_password,
                keep_other_sessions=not end_other_sessions,
            ),
            end_user=end_user,
            access_token=access_token,
        )

    async def reset_password(
        self,
        identifier: str,
        ticket: str,
        new_password: str,
        *,
        identifier_kind: int = 0,
        real_name: str = "",
        end_user: EndUser | None = None,
    ) -> accounts_pb2.ResetPasswordResponse:
        """Set a new password with a RESET_PASSWORD ticket or a recovery grant."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.ResetPassword,
            accounts_pb2.ResetPasswordRequest(
                identifier=identifier,
                identifier_kind=common_pb2.IdentifierKind.ValueType(identifier_kind),
                ticket=ticket,
                new_password=new_password,
                real_name=real_name,
            ),
            end_user=end_user,
        )

    async def bind_phone(
        self,
        login_name: str,
        password: str,
        phone: str,
        phone_ticket: str,
        *,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.BindPhoneResponse:
        """Bind a first phone to an account (login name, password, BIND_PHONE ticket)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.BindPhone,
            accounts_pb2.BindPhoneRequest(
                login_name=login_name, password=password, phone=phone, phone_ticket=phone_ticket
            ),
            end_user=end_user,
        )

    async def bind_email(
        self,
        access_token: str,
        email: str,
        email_ticket: str,
        *,
        password: str,
        current_email_ticket: str = "",
        end_user: EndUser | None = None,
    ) -> accounts_pb2.BindEmailResponse:
        """Bind (or replace) the signed-in user's email; the current password is required."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.BindEmail,
            accounts_pb2.BindEmailRequest(
                email=email,
                email_ticket=email_ticket,
                current_email_ticket=current_email_ticket,
                password=password,
            ),
            end_user=end_user,
            access_token=access_token,
        )

    async def unbind_email(
        self,
        access_token: str,
        password: str,
        *,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.UnbindEmailResponse:
        """Remove the signed-in user's email (the current password is required)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.UnbindEmail,
            accounts_pb2.UnbindEmailRequest(password=password),
            end_user=end_user,
            access_token=access_token,
        )

    async def change_phone(
        self,
        request: accounts_pb2.ChangePhoneRequest,
        *,
        access_token: str | None = None,
        end_user: EndUser | None = None,
    ) -> accounts_pb2.ChangePhoneResponse:
        """Change the bound phone; signed in (`access_token`) or by identifier in `request`."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.ChangePhone, request, end_user=end_user, access_token=access_token
        )

    # RecoveryService

    async def recover_account(
        self,
        request: recovery_pb2.RecoverAccountRequest,
        *,
        end_user: EndUser | None = None,
    ) -> recovery_pb2.RecoverAccountResponse:
        """Find an account from identity details and a RECOVER_ACCOUNT phone ticket."""
        stubs = self._ensure_stubs()
        return await self._unary(stubs.recovery.RecoverAccount, request, end_user=end_user)

    # PrivacyService

    async def get_policy(
        self,
        version: int = 0,
        *,
        end_user: EndUser | None = None,
    ) -> privacy_pb2.GetPolicyResponse:
        """The privacy policy text of `version` (0: the current one)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.privacy.GetPolicy,
            privacy_pb2.GetPolicyRequest(version=version),
            end_user=end_user,
        )

    async def accept_policy(
        self,
        access_token: str,
        version: int,
        *,
        end_user: EndUser | None = None,
    ) -> privacy_pb2.AcceptPolicyResponse:
        """Accept the current privacy policy; refresh the session afterwards."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.privacy.AcceptPolicy,
            privacy_pb2.AcceptPolicyRequest(version=version),
            end_user=end_user,
            access_token=access_token,
        )

    async def list_disclosures(
        self,
        access_token: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        end_user: EndUser | None = None,
    ) -> privacy_pb2.ListDisclosuresResponse:
        """Which clients received the signed-in person's identity fields, newest first."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.privacy.ListDisclosures,
            privacy_pb2.ListDisclosuresRequest(page_size=page_size, page_token=page_token),
            end_user=end_user,
            access_token=access_token,
        )

    # -- issue 14: consent and export --

    async def withdraw_consent(
        self,
        access_token: str,
        purpose: str,
        *,
        end_user: EndUser | None = None,
    ) -> privacy_pb2.WithdrawConsentResponse:
        """Withdraw a separate consent (`identity_documents`); the policy itself cannot be."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.privacy.WithdrawConsent,
            privacy_pb2.WithdrawConsentRequest(purpose=purpose),
            end_user=end_user,
            access_token=access_token,
        )

    async def list_consents(
        self,
        access_token: str,
        *,
        end_user: EndUser | None = None,
    ) -> privacy_pb2.ListConsentsResponse:
        """The signed-in person's consents, grants and withdrawals, oldest first."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.privacy.ListConsents,
            privacy_pb2.ListConsentsRequest(),
            end_user=end_user,
            access_token=access_token,
        )

    async def export_my_data(
        self,
        access_token: str,
        ticket: str,
        *,
        end_user: EndUser | None = None,
    ) -> dict[str, Any]:
        """Everything held about the signed-in person (ExportMyData), as the parsed JSON
        document; `ticket` comes from a verified EXPORT_DATA code to their phone or email."""
        stubs = self._ensure_stubs()
        call = stubs.privacy.ExportMyData(
            privacy_pb2.ExportMyDataRequest(ticket=ticket),
            timeout=self._timeout,
            metadata=self._metadata(end_user, access_token),
        )
        parts: list[bytes] = []
        try:
            async for message in call:
                parts.append(message.chunk)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        document: dict[str, Any] = json.loads(b"".join(parts).decode("utf-8"))
        return document

    async def download_my_document(
        self,
        access_token: str,
        document_id: str,
        *,
        end_user: EndUser | None = None,
    ) -> DownloadedDocument:
        """One of the signed-in person's identity documents (StreamMyDocument), in memory."""
        stubs = self._ensure_stubs()
        call = stubs.privacy.StreamMyDocument(
            privacy_pb2.StreamMyDocumentRequest(document_id=document_id),
            timeout=self._timeout,
            metadata=self._metadata(end_user, access_token),
        )
        parts: list[bytes] = []
        content_type, first = "", True
        try:
            async for message in call:
                if first:
                    content_type, first = message.content_type, False
                parts.append(message.chunk)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        data = b"".join(parts)
        return DownloadedDocument(content_type, len(data), data)

    # -- end consent and export --

    # DirectoryService: needs the `directory` grant, `field:NAME` grants and a declared purpose

    async def get_identity(
        self,
        account_id: str,
        fields: Sequence[FieldName],
        purpose: str,
        *,
        end_user: EndUser | None = None,
    ) -> directory_pb2.Identity:
        """One account's identity: only `fields`, each needing a field grant; `purpose` must be
        declared for this client. The release is logged for the person to see."""
        stubs = self._ensure_stubs()
        response = await self._unary(
            stubs.directory.GetIdentity,
            directory_pb2.GetIdentityRequest(
                account_id=account_id, fields=_identity_fields(fields), purpose=purpose
            ),
            end_user=end_user,
        )
        return response.identity

    async def batch_get_identities(
        self,
        account_ids: Sequence[str],
        fields: Sequence[FieldName],
        purpose: str,
        *,
        end_user: EndUser | None = None,
    ) -> directory_pb2.BatchGetIdentitiesResponse:
        """Up to 100 accounts' identities with the same rules; unknown ids in `not_found`."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.directory.BatchGetIdentities,
            directory_pb2.BatchGetIdentitiesRequest(
                account_ids=list(account_ids), fields=_identity_fields(fields), purpose=purpose
            ),
            end_user=end_user,
        )

    async def watch_revocations(
        self, since_cursor: str = "", *, end_user: EndUser | None = None
    ) -> AsyncIterator[directory_pb2.WatchRevocationsResponse]:
        """Ended sessions from `since_cursor` on (empty: from now), with heartbeats; needs the
        `validate` grant.

        The stream has no deadline: it lasts until the server ends it or the caller
        stops iterating (leaving the loop, or closing the iterator, cancels the call).
        The first message is a heartbeat carrying the current cursor; keep the last
        cursor to resume. `TokenVerifier.follow_revocations` does all of that.
        """
        stubs = self._ensure_stubs()
        call = stubs.directory.WatchRevocations(
            directory_pb2.WatchRevocationsRequest(since_cursor=since_cursor),
            metadata=self._metadata(end_user, None),
        )
        try:
            async for message in call:
                yield message
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    # RealNameService

    async def upload_document(
        self,
        document: bytes | str | os.PathLike[str],
        *,
        kind: int,
        access_token: str | None = None,
        phone_ticket: str = "",
        file_name: str = "",
        separate_consent: bool = False,
        chunk_size: int = UPLOAD_CHUNK_BYTES,
        end_user: EndUser | None = None,
    ) -> realname_pb2.UploadDocumentResponse:
        """Upload an identity document (bytes, or a file path read in chunks); `kind` is a
        `DocumentKind`. Signed in (`access_token`) or, for someone who cannot sign in, with a
        BIND_PHONE or RECOVER_ACCOUNT SMS `phone_ticket`. Set `separate_consent` once the user
        agreed to the processing of identity documents (needed the first time)."""
        if not 0 < chunk_size <= UPLOAD_CHUNK_BYTES:
            raise ValueError(f"chunk_size must be between 1 and {UPLOAD_CHUNK_BYTES}")
        path = None if isinstance(document, bytes) else Path(document)
        # A document is at most a few MiB: a file is read whole, off the event loop.
        content = (
            document
            if isinstance(document, bytes)
            else await asyncio.to_thread(Path(document).read_bytes)
        )
        header = realname_pb2.DocumentHeader(
            kind=kind,  # type: ignore[arg-type]
            file_name=file_name or (path.name if path is not None else ""),
            declared_size=len(content),
            separate_consent=separate_consent,
            phone_ticket=phone_ticket,
        )

        async def parts() -> AsyncIterator[realname_pb2.UploadDocumentRequest]:
            yield realname_pb2.UploadDocumentRequest(header=header)
            for start in range(0, len(content), chunk_size):
                yield realname_pb2.UploadDocumentRequest(chunk=content[start : start + chunk_size])

        stubs = self._ensure_stubs()
        try:
            return await stubs.realname.UploadDocument(
                parts(),
                timeout=self._timeout,
                metadata=self._metadata(end_user, access_token),
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def submit_natural_person(
        self,
        access_token: str,
        request: realname_pb2.SubmitNaturalPersonRequest,
        *,
        end_user: EndUser | None = None,
    ) -> realname_pb2.SubmitNaturalPersonResponse:
        """Submit the signed-in natural person's identity; the answer's state says the verdict."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.realname.SubmitNaturalPerson,
            request,
            end_user=end_user,
            access_token=access_token,
        )

    async def submit_legal_person(
        self,
        access_token: str,
        request: realname_pb2.SubmitLegalPersonRequest,
        *,
        end_user: EndUser | None = None,
    ) -> realname_pb2.SubmitLegalPersonResponse:
        """Submit the signed-in organisation's identity (USCC, representative, documents)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.realname.SubmitLegalPerson,
            request,
            end_user=end_user,
            access_token=access_token,
        )

    async def get_real_name_status(
        self, access_token: str, *, end_user: EndUser | None = None
    ) -> realname_pb2.GetRealNameStatusResponse:
        """The signed-in user's latest submission, its state and the real-name level."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.realname.GetRealNameStatus,
            realname_pb2.GetRealNameStatusRequest(),
            end_user=end_user,
            access_token=access_token,
        )

    # AdminService

    async def create_client(
        self,
        name: str,
        grants: Sequence[str],
        *,
        end_user: EndUser | None = None,
    ) -> admin_pb2.CreateClientResponse:
        """Create an API client; the response holds its secret, shown this once."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.CreateClient,
            admin_pb2.CreateClientRequest(name=name, grants=list(grants)),
            end_user=end_user,
        )

    async def list_clients(
        self, *, end_user: EndUser | None = None
    ) -> admin_pb2.ListClientsResponse:
        """Every API client (never their secrets)."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.ListClients,
            admin_pb2.ListClientsRequest(),
            end_user=end_user,
        )

    async def revoke_client(
        self,
        client_id: str,
        *,
        end_user: EndUser | None = None,
    ) -> admin_pb2.RevokeClientResponse:
        """Revoke an API client; its credentials stop working within seconds."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.RevokeClient,
            admin_pb2.RevokeClientRequest(client_id=client_id),
            end_user=end_user,
        )

    async def set_client_grants(
        self,
        client_id: str,
        grants: Sequence[str],
        *,
        end_user: EndUser | None = None,
    ) -> admin_pb2.SetClientGrantsResponse:
        """Replace an API client's grants."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.SetClientGrants,
            admin_pb2.SetClientGrantsRequest(client_id=client_id, grants=list(grants)),
            end_user=end_user,
        )

    async def verify_audit_chain(
        self,
        *,
        anchor_seq: int = 0,
        anchor_mac: str = "",
        end_user: EndUser | None = None,
    ) -> admin_pb2.VerifyAuditChainResponse:
        """Walk the audit chain and its signed checkpoints; report the first broken link.

        With `anchor_seq` and `anchor_mac` (a checkpoint saved from the server log), the
        chain must also hold that MAC at that seq and must not end before it.
        """
        stubs = self._ensure_stubs()
        request = admin_pb2.VerifyAuditChainRequest()
        if anchor_seq or anchor_mac:
            request.anchor.CopyFrom(admin_pb2.AuditChainAnchor(seq=anchor_seq, mac=anchor_mac))
        return await self._unary(stubs.admin.VerifyAuditChain, request, end_user=end_user)

    async def get_delivery(
        self, message_id: str, *, end_user: EndUser | None = None
    ) -> admin_pb2.GetDeliveryResponse:
        """One outbox message's lifecycle (provider, ids, receipt, times); never its text."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.GetDelivery,
            admin_pb2.GetDeliveryRequest(message_id=message_id),
            end_user=end_user,
        )

    # CarrierHookService

    async def report_delivery(
        self,
        reports: Sequence[carriers_pb2.DeliveryReport],
        *,
        end_user: EndUser | None = None,
    ) -> carriers_pb2.ReportDeliveryResponse:
        """Report what became of 1-100 messages (CMPP states); repeats change nothing."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.carriers.ReportDelivery,
            carriers_pb2.ReportDeliveryRequest(reports=list(reports)),
            end_user=end_user,
        )

    async def report_recycled_number(
        self,
        phone: str,
        recycled_at: float,
        *,
        end_user: EndUser | None = None,
    ) -> carriers_pb2.ReportRecycledNumberResponse:
        """Report that `phone` went back to the carrier at `recycled_at` (epoch seconds)."""
        request = carriers_pb2.ReportRecycledNumberRequest(phone=phone)
        request.recycled_at.FromNanoseconds(int(recycled_at * 1e9))
        stubs = self._ensure_stubs()
        return await self._unary(stubs.carriers.ReportRecycledNumber, request, end_user=end_user)

    # AdminService: SMS-pumping prefix blocks

    async def list_prefix_blocks(
        self, *, end_user: EndUser | None = None
    ) -> admin_pb2.ListPrefixBlocksResponse:
        """The number prefixes (号段) the SMS-pumping watch is throttling now."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.ListPrefixBlocks,
            admin_pb2.ListPrefixBlocksRequest(),
            end_user=end_user,
        )

    async def lift_prefix_block(
        self,
        prefix: str,
        *,
        end_user: EndUser | None = None,
    ) -> admin_pb2.LiftPrefixBlockResponse:
        """Lift the block on `prefix` (e.g. "86-1700123") now; `lifted`: whether one was on."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.LiftPrefixBlock,
            admin_pb2.LiftPrefixBlockRequest(prefix=prefix),
            end_user=end_user,
        )

    # ReviewService: every call carries the reviewer's token (signed in with password + TOTP)

    async def list_cases(
        self,
        access_token: str,
        *,
        kind: review_pb2.CaseKind.ValueType = review_pb2.CASE_KIND_UNSPECIFIED,
        state: review_pb2.CaseState.ValueType = review_pb2.CASE_STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        end_user: EndUser | None = None,
    ) -> review_pb2.ListCasesResponse:
        """Review cases, oldest first, with their waiting time against the SLA."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.review.ListCases,
            review_pb2.ListCasesRequest(
                kind=kind, state=state, page_size=page_size, page_token=page_token
            ),
            end_user=end_user,
            access_token=access_token,
        )

    async def get_case(
        self,
        access_token: str,
        case_id: str,
        *,
        reveal_fields: Sequence[str] = (),
        end_user: EndUser | None = None,
    ) -> review_pb2.Case:
        """One case; its fields masked except `reveal_fields` (each reveal is audited)."""
        stubs = self._ensure_stubs()
        response = await self._unary(
            stubs.review.GetCase,
            review_pb2.GetCaseRequest(case_id=case_id, reveal_fields=list(reveal_fields)),
            end_user=end_user,
            access_token=access_token,
        )
        return response.case

    async def download_document(
        self,
        access_token: str,
        case_id: str,
        document_id: str,
        *,
        to: Path | None = None,
        end_user: EndUser | None = None,
    ) -> DownloadedDocument:
        """A document the case references (StreamDocument), whole in memory or written to `to`.

        A file is created 0600 and must not exist yet; if the stream fails, the
        partial file is removed before the typed error is raised.
        """
        stubs = self._ensure_stubs()
        call = stubs.review.StreamDocument(
            review_pb2.StreamDocumentRequest(case_id=case_id, document_id=document_id),
            timeout=self._timeout,
            metadata=self._metadata(end_user, access_token),
        )
        if to is None:
            parts: list[bytes] = []
            content_type, size = await _drain(call, parts.append)
            return DownloadedDocument(content_type, size, b"".join(parts))
        fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                content_type, size = await _drain(call, out.write)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(to)
            raise
        return DownloadedDocument(content_type, size, b"")

    async def decide_case(
        self,
        access_token: str,
        case_id: str,
        decision: review_pb2.Decision.ValueType,
        reason: str,
        *,
        end_user: EndUser | None = None,
    ) -> review_pb2.DecideCaseResponse:
        """Approve or reject a case with a reason; `state` says where it stands now."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.review.DecideCase,
            review_pb2.DecideCaseRequest(case_id=case_id, decision=decision, reason=reason),
            end_user=end_user,
            access_token=access_token,
        )

    async def add_note(
        self,
        access_token: str,
        case_id: str,
        text: str,
        *,
        end_user: EndUser | None = None,
    ) -> None:
        """Add a note to a case."""
        stubs = self._ensure_stubs()
        await self._unary(
            stubs.review.AddNote,
            review_pb2.AddNoteRequest(case_id=case_id, text=text),
            end_user=end_user,
            access_token=access_token,
        )

    # -- issue 14: rights requests --
    # PrivacyService (the signed-in person) and AdminService (operators, `admin` grant)

    async def file_request(
        self,
        access_token: str,
        kind: privacy_pb2.RightsRequestKind.ValueType,
        detail: str = "",
        *,
        end_user: EndUser | None = None,
    ) -> privacy_pb2.RightsRequest:
        """File a request about the signed-in person's data; `due_date` is the 15th working day."""
        stubs = self._ensure_stubs()
        response = await self._unary(
            stubs.privacy.FileRequest,
            privacy_pb2.FileRequestRequest(kind=kind, detail=detail),
            end_user=end_user,
            access_token=access_token,
        )
        return response.request

    async def list_requests(
        self,
        access_token: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        end_user: EndUser | None = None,
    ) -> privacy_pb2.ListRequestsResponse:
        """The signed-in person's requests and their answers, newest first."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.privacy.ListRequests,
            privacy_pb2.ListRequestsRequest(page_size=page_size, page_token=page_token),
            end_user=end_user,
            access_token=access_token,
        )

    async def list_rights_requests(
        self,
        *,
        state: privacy_pb2.RightsRequestState.ValueType = (
            privacy_pb2.RIGHTS_REQUEST_STATE_UNSPECIFIED
        ),
        overdue_only: bool = False,
        page_size: int = 0,
        page_token: str = "",
        end_user: EndUser | None = None,
    ) -> admin_pb2.ListRightsRequestsResponse:
        """Operators: rights requests soonest due first, by state or only the overdue ones."""
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.admin.ListRightsRequests,
            admin_pb2.ListRightsRequestsRequest(
                state=state, overdue_only=overdue_only, page_size=page_size, page_token=page_token
            ),
            end_user=end_user,
        )

    async def resolve_request(
        self,
        request_id: str,
        outcome: privacy_pb2.RightsRequestOutcome.ValueType,
        note: str = "",
        *,
        end_user: EndUser | None = None,
    ) -> privacy_pb2.RightsRequest:
        """Operators: answer an open request (a refusal needs a note saying why)."""
        stubs = self._ensure_stubs()
        response = await self._unary(
            stubs.admin.ResolveRequest,
            admin_pb2.ResolveRequestRequest(request_id=request_id, outcome=outcome, note=note),
            end_user=end_user,
        )
        return response.request

    # -- end rights requests --

    # -- issue 14: deactivation --

    async def deactivate(
        self, access_token: str, ticket: str, *, end_user: EndUser | None = None
    ) -> accounts_pb2.DeactivateResponse:
        """Deactivate (注销) the signed-in account with a DEACTIVATE ticket of its phone or email.

        Every session ends now; `completes_at` says when the cooling-off period ends.
        Signing in before then cancels it (`LoginResponse.deactivation_cancelled`).
        """
        stubs = self._ensure_stubs()
        return await self._unary(
            stubs.accounts.Deactivate,
            accounts_pb2.DeactivateRequest(ticket=ticket),
            end_user=end_user,
            access_token=access_token,
        )

    # -- end deactivation --


async def _drain(
    call: AsyncIterable[review_pb2.StreamDocumentResponse], write: Callable[[bytes], object]
) -> tuple[str, int]:
    """Hand every chunk of a StreamDocument call to `write`; the first message's type and size.

    A grpc error becomes the typed error of `xiaohe.identity.client.errors`.
    """
    content_type, size, first = "", 0, True
    try:
        async for message in call:
            if first:
                content_type, size, first = message.content_type, message.size, False
            if message.chunk:
                write(message.chunk)
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
    return content_type, size
