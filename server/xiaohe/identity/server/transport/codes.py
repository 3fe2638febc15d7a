"""CodeService servicer: proto <-> domain only."""

from __future__ import annotations

from typing import Any

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.codes.models import IssueCodeCommand, VerifyCodeCommand
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.transport.enums import channel_from_proto, purpose_from_proto
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc


class CodeServicer(codes_pb2_grpc.CodeServiceServicer):
    """Issues and verifies one-time codes."""

    def __init__(self, codes: CodeService) -> None:
        self._codes = codes

    async def IssueCode(
        self, request: codes_pb2.IssueCodeRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> codes_pb2.IssueCodeResponse:
        rc = context.current()
        issued = await self._codes.issue(
            IssueCodeCommand(
                channel=channel_from_proto(request.channel),
                destination=request.destination,
                purpose=purpose_from_proto(request.purpose),
            ),
            client_id=rc.client_id,
            end_user_ip=rc.end_user_ip or None,
        )
        return codes_pb2.IssueCodeResponse(
            code_id=issued.code_id,
            expires_in_seconds=int(issued.expires_in),
            resend_after_seconds=int(issued.resend_after),
        )

    async def VerifyCode(
        self, request: codes_pb2.VerifyCodeRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> codes_pb2.VerifyCodeResponse:
        rc = context.current()
        verified = await self._codes.verify(
            VerifyCodeCommand(
                channel=channel_from_proto(request.channel),
                destination=request.destination,
                purpose=purpose_from_proto(request.purpose),
                code=request.code,
            ),
            client_id=rc.client_id,
            end_user_ip=rc.end_user_ip or None,
        )
        return codes_pb2.VerifyCodeResponse(
            ticket=verified.ticket, expires_in_seconds=int(verified.expires_in)
        )
