"""RecoveryService servicer: account recovery (proto <-> domain only)."""

from __future__ import annotations

from typing import Any

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.flows.recovery import RecoverCommand, RecoveryFlow
from xiaohe.identity.server.transport.enums import enum_name, id_type
from xiaohe.identity.v1 import common_pb2, recovery_pb2, recovery_pb2_grpc


def recover_command(request: recovery_pb2.RecoverAccountRequest) -> RecoverCommand:
    """The domain command for a RecoverAccount request."""
    rc = context.current()
    subject = request.WhichOneof("subject")
    proof = request.WhichOneof("proof")
    if proof is None:
        raise InvalidArgument(
            FieldViolation("proof", "give phone_ticket, or manual_review without the phone")
        )
    common: dict[str, Any] = {
        "phone": request.phone,
        "phone_ticket": request.phone_ticket,
        "manual_review": proof == "manual_review",
        "client_id": rc.client_id,
        "ip": rc.end_user_ip,
        "new_phone": request.manual_review.new_phone,
        "new_phone_ticket": request.manual_review.new_phone_ticket,
        "document_ids": tuple(request.manual_review.document_ids),
    }
    if subject == "natural_person":
        person = request.natural_person
        return RecoverCommand(
            subject_type=SubjectType.NATURAL_PERSON,
            name=person.name,
            id_type=id_type(person.id_type, "natural_person.id_type"),
            id_number=person.id_number,
            **common,
        )
    if subject == "legal_person":
        org = request.legal_person
        return RecoverCommand(
            subject_type=SubjectType.LEGAL_PERSON,
            organization_name=org.organization_name,
            organization_type=enum_name(
                common_pb2.OrganizationType.Name,
                "ORGANIZATION_TYPE_",
                org.organization_type,
                "legal_person.organization_type",
            ),
            uscc=org.uscc,
            representative_type=enum_name(
                common_pb2.RepresentativeType.Name,
                "REPRESENTATIVE_TYPE_",
                org.representative_type,
                "legal_person.representative_type",
            ),
            representative_name=org.representative_name,
            representative_id_type=id_type(
                org.representative_id_type, "legal_person.representative_id_type"
            ),
            representative_id_number=org.representative_id_number,
            **common,
        )
    return RecoverCommand(subject_type=None, **common)


class RecoveryServicer(recovery_pb2_grpc.RecoveryServiceServicer):
    """Account recovery."""

    def __init__(self, recovery: RecoveryFlow) -> None:
        self._recovery = recovery

    async def RecoverAccount(
        self, request: recovery_pb2.RecoverAccountRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> recovery_pb2.RecoverAccountResponse:
        recovered = await self._recovery.recover(recover_command(request))
        return recovery_pb2.RecoverAccountResponse(
            login_name_masked=recovered.login_name_masked,
            reset_grant=recovered.reset_grant,
            reset_grant_expires_in_seconds=recovered.expires_in,
            review_case_id=recovered.review_case_id,
        )
