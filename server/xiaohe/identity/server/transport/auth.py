"""AuthService servicer: login, refresh, logout, token validation, signing keys."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.callers.grants import AUDIENCE_SHAPE, allows_audience
from xiaohe.identity.server.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    TicketInvalid,
    TokenInvalid,
)
from xiaohe.identity.server.flows.login import LoginFlow, LoginResult
from xiaohe.identity.server.flows.totp import SecondFactorCode
from xiaohe.identity.server.sessions.models import IssuedSession
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.sessions.tokens import jwks_json
from xiaohe.identity.server.transport.enums import identifier_kind, to_proto
from xiaohe.identity.v1 import auth_pb2, auth_pb2_grpc, common_pb2

MAX_REQUIRED_METHODS = 10
"""`ValidateTokenRequest.required_auth_methods`: more names than any session could carry is a
caller's mistake, not a question."""


def session_to_proto(session: IssuedSession) -> auth_pb2.Session:
    """The proto view of a freshly issued session."""
    return auth_pb2.Session(
        access_token=session.access_token,
        access_token_expires_in_seconds=session.access_expires_in,
        refresh_token=session.refresh_token,
        refresh_token_expires_in_seconds=session.refresh_expires_in,
        session_id=session.session_id,
        account_id=session.account_id,
        token_type="Bearer",  # noqa: S106 - the token scheme, not a secret
    )


def unverified_audience(token: str) -> str:
    """The first `aud` of a token's payload, unverified ("" if unreadable): only to pick the
    audience that the (verifying) logout then checks the token against."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return ""
    aud = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(aud, list) and aud:
        aud = aud[0]
    return aud if isinstance(aud, str) and AUDIENCE_SHAPE.fullmatch(aud) else ""


def _subject_type(name: str) -> common_pb2.SubjectType.ValueType:
    try:
        return common_pb2.SubjectType.Value("SUBJECT_TYPE_" + name)
    except ValueError:
        return common_pb2.SUBJECT_TYPE_UNSPECIFIED


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Sign-in and tokens."""

    def __init__(
        self,
        login: LoginFlow,
        sessions: SessionService,
        public_keys: Callable[[], Mapping[str, bytes]],
        default_audience: str,
    ) -> None:
        self._login = login
        self._sessions = sessions
        self._public_keys = public_keys
        self._default_audience = default_audience

    def _audience(self, requested: str, *, keep_session_audience: bool = False) -> str:
        """The audience to issue for; INVALID_ARGUMENT or PERMISSION_DENIED when not allowed.

        An empty request means the default audience (or, on Refresh, the session's own).
        """
        if not requested:
            return "" if keep_session_audience else self._default_audience
        if AUDIENCE_SHAPE.fullmatch(requested) is None:
            raise InvalidArgument(
                FieldViolation("audience", "1-100 characters of letters, digits and ._:/-")
            )
        if not allows_audience(context.current().grants, requested, self._default_audience):
            raise PermissionDenied("this client may not obtain tokens for the requested audience")
        return requested

    async def Login(
        self, request: auth_pb2.LoginRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.LoginResponse:
        rc = context.current()
        common: dict[str, Any] = {
            "audience": self._audience(request.audience),
            "client_id": rc.client_id,
            "ip": rc.end_user_ip,
            "user_agent": rc.end_user_agent,
        }
        method = request.WhichOneof("method")
        result: LoginResult
        if method == "password":
            credential = request.password
            result = await self._login.login_with_password(
                credential.identifier,
                identifier_kind(credential.identifier_kind, "password.identifier_kind"),
                credential.password,
                **common,
            )
        elif method == "sms_ticket":
            try:
                result = await self._login.login_with_sms_ticket(request.sms_ticket, **common)
            except TicketInvalid as exc:
                raise TicketInvalid(exc.message, field="sms_ticket") from None
        else:
            raise InvalidArgument(FieldViolation("method", "give a password or an sms_ticket"))
        if result.session is None:  # MFA_REQUIRED: no session until CompleteMfa
            return auth_pb2.LoginResponse(
                next_step=to_proto(auth_pb2.NextStep.Value, "NEXT_STEP_", result.next_step),
                mfa_ticket=result.mfa_ticket,
                mfa_ticket_expires_in_seconds=result.mfa_ticket_expires_in,
            )
        return auth_pb2.LoginResponse(
            session=session_to_proto(result.session),
            next_step=to_proto(auth_pb2.NextStep.Value, "NEXT_STEP_", result.next_step),
            deactivation_cancelled=result.deactivation_cancelled,
        )

    async def CompleteMfa(
        self, request: auth_pb2.CompleteMfaRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.CompleteMfaResponse:
        rc = context.current()
        result = await self._login.complete_mfa(
            request.mfa_ticket,
            SecondFactorCode(totp_code=request.totp_code, recovery_code=request.recovery_code),
            client_id=rc.client_id,
            ip=rc.end_user_ip,
            user_agent=rc.end_user_agent,
        )
        assert result.session is not None  # complete_mfa always starts a session
        return auth_pb2.CompleteMfaResponse(
            session=session_to_proto(result.session),
            next_step=to_proto(auth_pb2.NextStep.Value, "NEXT_STEP_", result.next_step),
            deactivation_cancelled=result.deactivation_cancelled,
        )

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.RefreshResponse:
        if not request.refresh_token:
            raise InvalidArgument(FieldViolation("refresh_token", "is required"))
        # An empty audience keeps the session's own; the token is bound to its client.
        session = await self._sessions.refresh(
            request.refresh_token,
            self._audience(request.audience, keep_session_audience=True),
            client_id=context.current().client_id,
        )
        return auth_pb2.RefreshResponse(session=session_to_proto(session))

    async def Logout(
        self, request: auth_pb2.LogoutRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.LogoutResponse:
        which = request.WhichOneof("token")
        if which == "refresh_token" and request.refresh_token:
            await self._sessions.logout(refresh_token=request.refresh_token)
        elif which == "access_token" and request.access_token:
            # Whatever audience the token was issued for, it may end its own session;
            # the signature and expiry are still checked.
            await self._sessions.logout(
                access_token=request.access_token,
                audience=unverified_audience(request.access_token),
            )
        else:
            raise InvalidArgument(FieldViolation("token", "give a refresh_token or access_token"))
        return auth_pb2.LogoutResponse()

    async def ValidateToken(
        self, request: auth_pb2.ValidateTokenRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.ValidateTokenResponse:
        required = request.required_auth_methods
        if len(required) > MAX_REQUIRED_METHODS or not all(0 < len(m) <= 20 for m in required):
            raise InvalidArgument(
                FieldViolation(
                    "required_auth_methods",
                    f"at most {MAX_REQUIRED_METHODS} method names of 1-20 characters",
                )
            )
        try:
            # Checking a token needs no audience grant: it only answers whether it is valid.
            # An empty audience means the default one (SessionService.validate).
            claims = self._sessions.validate(request.access_token, request.audience)
        except TokenInvalid:
            return auth_pb2.ValidateTokenResponse(valid=False)
        if not set(required) <= set(claims.amr):
            # The session did not use a method the business system requires (e.g. "otp").
            return auth_pb2.ValidateTokenResponse(valid=False)
        return auth_pb2.ValidateTokenResponse(
            valid=True,
            account_id=claims.sub,
            session_id=claims.sid,
            subject_type=_subject_type(claims.subject_type),
            auth_methods=list(claims.amr),
            real_name_level=claims.rn_level,
            expires_at_unix=int(claims.exp),
        )

    async def GetSigningKeys(
        self, request: auth_pb2.GetSigningKeysRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.GetSigningKeysResponse:
        return auth_pb2.GetSigningKeysResponse(jwks_json=jwks_json(self._public_keys()))
