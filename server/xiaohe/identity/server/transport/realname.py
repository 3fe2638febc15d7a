"""RealNameService servicer: documents in a client stream, real-name submissions and status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from google.protobuf import timestamp_pb2

from xiaohe.identity.server import context
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.flows.realname import (
    LegalPersonCommand,
    NaturalPersonCommand,
    RealNameFlow,
    UploadHeader,
)
from xiaohe.identity.server.realname.submissions import State
from xiaohe.identity.server.transport.timestamps import epoch_seconds, timestamp
from xiaohe.identity.server.transport.users import TokenValidation, require_user
from xiaohe.identity.v1 import common_pb2, realname_pb2, realname_pb2_grpc

_STATES: Final = {
    None: realname_pb2.REAL_NAME_STATE_NONE,
    State.PENDING: realname_pb2.REAL_NAME_STATE_PENDING,
    State.IN_REVIEW: realname_pb2.REAL_NAME_STATE_IN_REVIEW,
    State.VERIFIED: realname_pb2.REAL_NAME_STATE_VERIFIED,
    State.REJECTED: realname_pb2.REAL_NAME_STATE_REJECTED,
}


def _enum_name(name_of: Any, prefix: str, value: int) -> str:
    """An enum value's name without its prefix; "" for UNSPECIFIED or an unknown number."""
    try:
        name = str(name_of(value))
    except ValueError:
        return ""
    short = name.removeprefix(prefix)
    return "" if short == "UNSPECIFIED" else short


def _time(request: Any, field: str, violations: list[FieldViolation]) -> float | None:
    """A request's optional Timestamp field as epoch seconds; a bad one is a violation."""
    if not request.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(request, field)
    seconds = epoch_seconds(ts)
    if seconds is None:
        violations.append(FieldViolation(field, "must be a time between 1970 and 2100"))
    return seconds


class RealNameServicer(realname_pb2_grpc.RealNameServiceServicer):
    """Identity documents and real-name verification of the signed-in user."""

    def __init__(self, flow: RealNameFlow, tokens: TokenValidation) -> None:
        self._flow = flow
        self._tokens = tokens

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[realname_pb2.UploadDocumentRequest],
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> realname_pb2.UploadDocumentResponse:
        # The header, the owner and the separate consent are settled before any chunk is read.
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(FieldViolation("header", "the first message must be a header"))
        header = first.header
        account_id = None
        if not header.phone_ticket:
            account_id = require_user(ctx, self._tokens).sub
        rc = context.current()
        permit = await self._flow.start_upload(
            UploadHeader(
                kind=_enum_name(
                    realname_pb2.DocumentKind.Name, "DOCUMENT_KIND_", header.kind
                ).lower(),
                file_name=header.file_name,
                declared_size=header.declared_size,
                separate_consent=header.separate_consent,
                phone_ticket=header.phone_ticket,
            ),
            account_id=account_id,
            client_id=rc.client_id,
            ip=rc.end_user_ip,
        )
        content = bytearray()
        # Chunks average at least 1 KiB: a stream of tiny or empty messages cannot hold
        # the call (and a worker's attention) open for long.
        most_chunks = max(1024, permit.limit // 1024)
        chunks = 0
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument(
                    FieldViolation("header", "only the first message is a header")
                )
            chunks += 1
            if not message.chunk or chunks > most_chunks:
                raise InvalidArgument(
                    FieldViolation("chunk", f"send the document in at most {most_chunks} chunks")
                )
            content += message.chunk
            if len(content) > permit.limit:
                # Refused as soon as the stream passes the cap: nothing more is read.
                what = "header.declared_size" if permit.exact else f"{permit.limit} bytes"
                raise InvalidArgument(
                    FieldViolation("chunk", f"the document is larger than {what}")
                )
        info = await self._flow.finish_upload(permit, bytes(content))
        return realname_pb2.UploadDocumentResponse(
            document_id=info.document_id, content_type=info.content_type, size=info.size
        )

    async def SubmitNaturalPerson(
        self,
        request: realname_pb2.SubmitNaturalPersonRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> realname_pb2.SubmitNaturalPersonResponse:
        claims = require_user(ctx, self._tokens)
        violations: list[FieldViolation] = []
        valid_from = _time(request, "valid_from", violations)
        valid_until = _time(request, "valid_until", violations)
        if violations:
            raise InvalidArgument(violations)
        submitted = await self._flow.submit_natural(
            NaturalPersonCommand(
                account_id=claims.sub,
                name=request.name,
                id_type=request.id_type,
                id_number=request.id_number,
                valid_from=valid_from,
                valid_until=valid_until,
                address=request.address,
                document_ids=tuple(request.document_ids),
            )
        )
        return realname_pb2.SubmitNaturalPersonResponse(
            submission_id=submitted.submission_id, state=_STATES[submitted.state]
        )

    async def SubmitLegalPerson(
        self,
        request: realname_pb2.SubmitLegalPersonRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> realname_pb2.SubmitLegalPersonResponse:
        claims = require_user(ctx, self._tokens)
        submitted = await self._flow.submit_legal(
            LegalPersonCommand(
                account_id=claims.sub,
                organization_name=request.organization_name,
                organization_type=_enum_name(
                    common_pb2.OrganizationType.Name,
                    "ORGANIZATION_TYPE_",
                    request.organization_type,
                ),
                uscc=request.uscc,
                representative_type=_enum_name(
                    common_pb2.RepresentativeType.Name,
                    "REPRESENTATIVE_TYPE_",
                    request.representative_type,
                ),
                representative_name=request.representative_name,
                representative_id_type=request.representative_id_type,
                representative_id_number=request.representative_id_number,
                address=request.address,
                licence_document_ids=tuple(request.licence_document_ids),
                publicity_screenshot_document_ids=tuple(request.publicity_screenshot_document_ids),
                representative_id_document_ids=tuple(request.representative_id_document_ids),
            )
        )
        return realname_pb2.SubmitLegalPersonResponse(
            submission_id=submitted.submission_id, state=_STATES[submitted.state]
        )

    async def GetRealNameStatus(
        self,
        request: realname_pb2.GetRealNameStatusRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> realname_pb2.GetRealNameStatusResponse:
        claims = require_user(ctx, self._tokens)
        status = await self._flow.status(claims.sub)
        response = realname_pb2.GetRealNameStatusResponse(
            state=_STATES[status.state],
            real_name_level=status.level,
            reason=status.reason,
            submission_id=status.submission_id,
            name_masked=status.name_masked,
        )
        if status.submitted_at is not None:
            response.submitted_at.CopyFrom(timestamp(status.submitted_at))
        if status.decided_at is not None:
            response.decided_at.CopyFrom(timestamp(status.decided_at))
        return response
