"""AccountService servicer: registration, the user's own account and sessions."""

from __future__ import annotations

from typing import Any

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    TicketInvalid,
    Unimplemented,
)
from xiaohe.identity.server.flows.channels import (
    BindEmailCommand,
    BindPhoneCommand,
    ChannelFlow,
    UnbindEmailCommand,
)
from xiaohe.identity.server.flows.deactivation import DeactivateCommand, DeactivationFlow
from xiaohe.identity.server.flows.passwords import (
    ChangePasswordCommand,
    PasswordFlow,
    ResetPasswordCommand,
)
from xiaohe.identity.server.flows.phone_change import (
    ChangePhoneCommand,
    PhoneChangeFlow,
    PhoneProof,
)
from xiaohe.identity.server.flows.registration import RegisterCommand, RegistrationFlow
from xiaohe.identity.server.flows.totp import (
    ConfirmTotpCommand,
    DisableTotpCommand,
    EnrollTotpCommand,
    SecondFactorCode,
    TotpFlow,
)
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.shared.identifiers import IdType
from xiaohe.identity.server.transport.enums import (
    enum_name,
    from_proto,
    id_type,
    identifier_kind,
    to_proto,
)
from xiaohe.identity.server.transport.timestamps import timestamp
from xiaohe.identity.server.transport.users import bearer_token, require_user
from xiaohe.identity.v1 import accounts_pb2, accounts_pb2_grpc, common_pb2

CONSENT_CHANNEL = "registration"

# The domain names profile fields flat; the request nests them in its `profile` oneof.
_REQUEST_PATHS = {
    "name": "natural_person.name",
    "id_type": "natural_person.id_type",
    "id_number": "natural_person.id_number",
    "organization_name": "legal_person.organization_name",
    "uscc": "legal_person.uscc",
    "organization_type": "legal_person.organization_type",
    "representative_type": "legal_person.representative_type",
    "representative_name": "legal_person.representative_name",
    "representative_id_type": "legal_person.representative_id_type",
    "representative_id_number": "legal_person.representative_id_number",
}


def _subject_type(value: int) -> SubjectType | None:
    if value == common_pb2.SUBJECT_TYPE_UNSPECIFIED:
        return None  # the service reports the missing field with the others
    return from_proto(
        common_pb2.SubjectType.Name, "SUBJECT_TYPE_", SubjectType, value, "subject_type"
    )


def register_command(request: accounts_pb2.RegisterRequest) -> RegisterCommand:
    """The domain command for a Register request."""
    natural, legal = request.natural_person, request.legal_person
    if request.HasField("natural_person") and natural.id_type not in IdType._value2member_map_:
        raise InvalidArgument(FieldViolation("natural_person.id_type", "unknown ID type"))
    return RegisterCommand(
        subject_type=_subject_type(request.subject_type),
        login_name=request.login_name,
        password=request.password,
        phone=request.phone,
        phone_ticket=request.phone_ticket,
        accepted_policy_version=request.accepted_policy_version,
        name=natural.name,
        id_type=IdType(natural.id_type),
        id_number=natural.id_number,
        organization_name=legal.organization_name,
        uscc=legal.uscc,
        organization_type=enum_name(
            common_pb2.OrganizationType.Name,
            "ORGANIZATION_TYPE_",
            legal.organization_type,
            "legal_person.organization_type",
        ),
        representative_type=enum_name(
            common_pb2.RepresentativeType.Name,
            "REPRESENTATIVE_TYPE_",
            legal.representative_type,
            "legal_person.representative_type",
        ),
        representative_name=legal.representative_name,
        representative_id_type=id_type(
            legal.representative_id_type, "legal_person.representative_id_type"
        ),
        representative_id_number=legal.representative_id_number,
    )


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    """Registration and the signed-in user's account."""

    def __init__(
        self,
        *,
        registration: RegistrationFlow,
        passwords: PasswordFlow,
        channels: ChannelFlow,
        phone_change: PhoneChangeFlow,
        accounts: AccountService,
        sessions: SessionService,
        totp: TotpFlow | None = None,
        deactivation: DeactivationFlow | None = None,
    ) -> None:
        self._registration = registration
        self._passwords = passwords
        self._channels = channels
        self._phone_change = phone_change
        self._accounts = accounts
        self._sessions = sessions
        self._totp = totp
        self._deactivation = deactivation

    async def Register(
        self, request: accounts_pb2.RegisterRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.RegisterResponse:
        rc = context.current()
        try:
            registered = await self._registration.register(
                register_command(request),
                client_id=rc.client_id,
                channel=CONSENT_CHANNEL,
                end_user_ip=rc.end_user_ip or None,
            )
        except TicketInvalid as exc:
            raise TicketInvalid(exc.message, field="phone_ticket") from None
        except AlreadyExists as exc:
            raise AlreadyExists(_REQUEST_PATHS.get(exc.field, exc.field), exc.message) from None
        except InvalidArgument as exc:
            raise InvalidArgument(
                [
                    FieldViolation(_REQUEST_PATHS.get(v.field, v.field), v.description)
                    for v in exc.violations
                ]
            ) from None
        return accounts_pb2.RegisterResponse(account_id=registered.account_id)

    async def GetAccount(
        self, request: accounts_pb2.GetAccountRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.GetAccountResponse:
        claims = require_user(ctx, self._sessions)
        view = await self._accounts.get_view(claims.sub)
        return accounts_pb2.GetAccountResponse(
            account=accounts_pb2.Account(
                account_id=view.account_id,
                subject_type=to_proto(
                    common_pb2.SubjectType.Value, "SUBJECT_TYPE_", view.subject_type
                ),
                login_name=view.login_name,
                phone_masked=view.phone_masked,
                email_masked=view.email_masked,
                accepted_policy_version=view.accepted_policy_version,
                real_name_level=view.real_name_level,
                created_at=timestamp(view.created_at),
            )
        )

    async def ListSessions(
        self, request: accounts_pb2.ListSessionsRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.ListSessionsResponse:
        claims = require_user(ctx, self._sessions)
        sessions = await self._sessions.list_sessions(claims.sub)
        return accounts_pb2.ListSessionsResponse(
            sessions=[
                accounts_pb2.SessionInfo(
                    session_id=s.session_id,
                    created_at=timestamp(s.created_at),
                    last_used_at=timestamp(s.last_used_at),
                    auth_methods=list(s.amr),
                    ip_masked=s.ip_masked,
                    user_agent=s.user_agent,
                    current=s.session_id == claims.sid,
                )
                for s in sessions
            ]
        )

    async def RevokeSession(
        self, request: accounts_pb2.RevokeSessionRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.RevokeSessionResponse:
        claims = require_user(ctx, self._sessions)
        if not request.session_id:
            raise InvalidArgument(FieldViolation("session_id", "is required"))
        await self._sessions.revoke_session(
            claims.sub, request.session_id, RevokeReason.USER_REQUEST
        )
        return accounts_pb2.RevokeSessionResponse()

    async def ChangePassword(
        self, request: accounts_pb2.ChangePasswordRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.ChangePasswordResponse:
        claims = require_user(ctx, self._sessions)
        ended = await self._passwords.change(
            ChangePasswordCommand(
                account_id=claims.sub,
                session_id=claims.sid,
                current_password=request.current_password,
                new_password=request.new_password,
                # `end_other_sessions` (deprecated) is ignored: left out, it read as "keep".
                keep_other_sessions=request.keep_other_sessions,
                ip=context.current().end_user_ip,
            )
        )
        return accounts_pb2.ChangePasswordResponse(sessions_ended=ended)

    async def ResetPassword(
        self, request: accounts_pb2.ResetPasswordRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.ResetPasswordResponse:
        await self._passwords.reset(
            ResetPasswordCommand(
                identifier=request.identifier,
                identifier_kind=identifier_kind(request.identifier_kind),
                ticket=request.ticket,
                new_password=request.new_password,
                real_name=request.real_name,
                ip=context.current().end_user_ip,
            )
        )
        return accounts_pb2.ResetPasswordResponse()

    async def BindPhone(
        self, request: accounts_pb2.BindPhoneRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.BindPhoneResponse:
        masked = await self._channels.bind_phone(
            BindPhoneCommand(
                login_name=request.login_name,
                password=request.password,
                phone=request.phone,
                phone_ticket=request.phone_ticket,
                ip=context.current().end_user_ip,
            )
        )
        return accounts_pb2.BindPhoneResponse(phone_masked=masked)

    async def BindEmail(
        self, request: accounts_pb2.BindEmailRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.BindEmailResponse:
        claims = require_user(ctx, self._sessions)
        masked = await self._channels.bind_email(
            BindEmailCommand(
                account_id=claims.sub,
                session_id=claims.sid,
                email=request.email,
                email_ticket=request.email_ticket,
                current_email_ticket=request.current_email_ticket,
                password=request.password,
                ip=context.current().end_user_ip,
            )
        )
        return accounts_pb2.BindEmailResponse(email_masked=masked)

    async def UnbindEmail(
        self, request: accounts_pb2.UnbindEmailRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.UnbindEmailResponse:
        claims = require_user(ctx, self._sessions)
        await self._channels.unbind_email(
            UnbindEmailCommand(
                account_id=claims.sub,
                session_id=claims.sid,
                password=request.password,
                ip=context.current().end_user_ip,
            )
        )
        return accounts_pb2.UnbindEmailResponse()

    async def ChangePhone(
        self, request: accounts_pb2.ChangePhoneRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.ChangePhoneResponse:
        # Signed in, the caller's own account; otherwise the one `identifier` names.
        account_id = session_id = ""
        if bearer_token(ctx):
            claims = require_user(ctx, self._sessions)
            account_id, session_id = claims.sub, claims.sid
        proof = request.WhichOneof("proof")
        proof_ticket = {
            "old_phone_ticket": request.old_phone_ticket,
            "email_ticket": request.email_ticket,
        }.get(proof or "", "")
        kinds = {
            "old_phone_ticket": PhoneProof.OLD_PHONE,
            "email_ticket": PhoneProof.EMAIL,
            "manual_review": PhoneProof.MANUAL_REVIEW,
        }
        if proof not in kinds:
            raise InvalidArgument(
                FieldViolation("proof", "give old_phone_ticket, email_ticket or manual_review")
            )
        changed = await self._phone_change.change(
            ChangePhoneCommand(
                identifier=request.identifier,
                identifier_kind=identifier_kind(request.identifier_kind),
                account_id=account_id,
                session_id=session_id,
                new_phone=request.new_phone,
                new_phone_ticket=request.new_phone_ticket,
                proof=kinds[proof],
                proof_ticket=proof_ticket,
                ip=context.current().end_user_ip,
                document_ids=tuple(request.manual_review.document_ids),
            )
        )
        return accounts_pb2.ChangePhoneResponse(
            phone_masked=changed.phone_masked,
            sessions_ended=changed.sessions_ended,
            review_case_id=changed.review_case_id,
        )

    # -- TOTP second factor ------------------------------------------------------------

    def _totp_flow(self) -> TotpFlow:
        if self._totp is None:
            raise Unimplemented("two-step verification is not available on this server")
        return self._totp

    async def EnrollTotp(
        self, request: accounts_pb2.EnrollTotpRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.EnrollTotpResponse:
        claims = require_user(ctx, self._sessions)
        enrolment = await self._totp_flow().enroll(
            EnrollTotpCommand(
                account_id=claims.sub, password=request.password, ip=context.current().end_user_ip
            )
        )
        return accounts_pb2.EnrollTotpResponse(
            otpauth_uri=enrolment.otpauth_uri, qr_png=enrolment.qr_png
        )

    async def ConfirmTotp(
        self, request: accounts_pb2.ConfirmTotpRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.ConfirmTotpResponse:
        claims = require_user(ctx, self._sessions)
        codes = await self._totp_flow().confirm(
            ConfirmTotpCommand(
                account_id=claims.sub, code=request.code, ip=context.current().end_user_ip
            )
        )
        return accounts_pb2.ConfirmTotpResponse(recovery_codes=list(codes))

    async def DisableTotp(
        self, request: accounts_pb2.DisableTotpRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.DisableTotpResponse:
        claims = require_user(ctx, self._sessions)
        await self._totp_flow().disable(
            DisableTotpCommand(
                account_id=claims.sub,
                code=SecondFactorCode(
                    totp_code=request.totp_code, recovery_code=request.recovery_code
                ),
                ip=context.current().end_user_ip,
            )
        )
        return accounts_pb2.DisableTotpResponse()

    # -- issue 14: deactivation --

    async def Deactivate(
        self, request: accounts_pb2.DeactivateRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> accounts_pb2.DeactivateResponse:
        claims = require_user(ctx, self._sessions)
        if self._deactivation is None:
            raise Unimplemented("deactivation is not available on this server")
        requested = await self._deactivation.deactivate(
            DeactivateCommand(account_id=claims.sub, ticket=request.ticket)
        )
        return accounts_pb2.DeactivateResponse(
            completes_at=timestamp(requested.due_at), sessions_ended=requested.sessions_ended
        )

    # -- end deactivation --
