"""PrivacyService servicer: the policy versions, consent and the person's disclosures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument, Unimplemented
from xiaohe.identity.server.flows.consent import (
    AcceptPolicyCommand,
    ConsentFlow,
    WithdrawConsentCommand,
)
from xiaohe.identity.server.flows.directory import DirectoryFlow
from xiaohe.identity.server.flows.export import EXPORT_SCHEMA, ExportCommand, ExportFlow
from xiaohe.identity.server.flows.rights_requests import FileRequestCommand, RightsRequestFlow
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.transport.rights_requests import kind_from_proto, request_to_proto
from xiaohe.identity.server.transport.timestamps import timestamp
from xiaohe.identity.server.transport.users import require_user
from xiaohe.identity.v1 import privacy_pb2, privacy_pb2_grpc

EXPORT_CHUNK_BYTES: Final = 64 * 1024
"""Size of the pieces an export is streamed in (well under gRPC's 4 MiB message limit)."""


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    """The privacy policy and consent."""

    def __init__(
        self,
        policies: PolicyStore,
        consent: ConsentFlow,
        sessions: SessionService,
        directory: DirectoryFlow | None = None,
        rights: RightsRequestFlow | None = None,
        export: ExportFlow | None = None,
    ) -> None:
        self._policies = policies
        self._consent = consent
        self._sessions = sessions
        self._directory = directory
        self._rights = rights

        self._export = export

    async def GetPolicy(
        self, request: privacy_pb2.GetPolicyRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> privacy_pb2.GetPolicyResponse:
        if request.version < 0:
            raise InvalidArgument(FieldViolation("version", "must be 0 (current) or a version"))
        policy = (
            await self._policies.get(request.version)
            if request.version
            else await self._policies.current()
        )
        return privacy_pb2.GetPolicyResponse(
            version=policy.version,
            text=policy.text,
            published_at=timestamp(policy.published_at),
            sha256=policy.sha256,
        )

    async def AcceptPolicy(
        self, request: privacy_pb2.AcceptPolicyRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> privacy_pb2.AcceptPolicyResponse:
        # The one RPC about "me" that a session restricted for consent may call.
        claims = require_user(ctx, self._sessions, allow_restricted=True)
        rc = context.current()
        version = await self._consent.accept(
            AcceptPolicyCommand(
                account_id=claims.sub,
                version=request.version,
                client_id=rc.client_id,
                ip=rc.end_user_ip,
            )
        )
        return privacy_pb2.AcceptPolicyResponse(accepted_version=version)

    async def ListDisclosures(
        self,
        request: privacy_pb2.ListDisclosuresRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> privacy_pb2.ListDisclosuresResponse:
        claims = require_user(ctx, self._sessions)
        if self._directory is None:
            raise Unimplemented("the directory is not served by this build")
        listing = await self._directory.list_disclosures(
            claims.sub, page_size=request.page_size, page_token=request.page_token
        )
        return privacy_pb2.ListDisclosuresResponse(
            disclosures=[
                privacy_pb2.Disclosure(
                    client_id=d.client_id,
                    client_name=d.client_name,
                    fields=list(d.fields),
                    purpose=d.purpose,
                    at=timestamp(d.at),
                )
                for d in listing.disclosures
            ],
            next_page_token=listing.next_page_token,
        )

    # -- issue 14: rights requests --

    def _rights_flow(self) -> RightsRequestFlow:
        if self._rights is None:
            raise Unimplemented("rights requests are not served by this build")
        return self._rights

    async def FileRequest(
        self, request: privacy_pb2.FileRequestRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> privacy_pb2.FileRequestResponse:
        # A person who will not accept a changed policy may still ask for deletion or complain.
        claims = require_user(ctx, self._sessions, allow_restricted=True)
        flow = self._rights_flow()
        filed = await flow.file(
            FileRequestCommand(
                account_id=claims.sub,
                kind=kind_from_proto(request.kind),
                detail=request.detail,
                client_id=context.current().client_id,
            )
        )
        return privacy_pb2.FileRequestResponse(
            request=request_to_proto(filed, flow, for_operator=False)
        )

    async def ListRequests(
        self, request: privacy_pb2.ListRequestsRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> privacy_pb2.ListRequestsResponse:
        claims = require_user(ctx, self._sessions, allow_restricted=True)
        flow = self._rights_flow()
        page = await flow.list_mine(
            claims.sub, page_size=request.page_size, page_token=request.page_token
        )
        return privacy_pb2.ListRequestsResponse(
            requests=[request_to_proto(r, flow, for_operator=False) for r in page.requests],
            next_page_token=page.next_page_token,
        )

    # -- end rights requests --

    # -- issue 14: consent and export --

    async def WithdrawConsent(
        self,
        request: privacy_pb2.WithdrawConsentRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> privacy_pb2.WithdrawConsentResponse:
        claims = require_user(ctx, self._sessions)
        if not request.purpose:
            raise InvalidArgument(FieldViolation("purpose", "must not be empty"))
        rc = context.current()
        consent_id = await self._consent.withdraw(
            WithdrawConsentCommand(
                account_id=claims.sub,
                purpose=request.purpose,
                client_id=rc.client_id,
                ip=rc.end_user_ip,
            )
        )
        return privacy_pb2.WithdrawConsentResponse(consent_id=consent_id)

    async def ListConsents(
        self,
        request: privacy_pb2.ListConsentsRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> privacy_pb2.ListConsentsResponse:
        claims = require_user(ctx, self._sessions)
        return privacy_pb2.ListConsentsResponse(
            consents=[
                privacy_pb2.ConsentRecord(
                    consent_id=c.consent_id,
                    purpose=c.purpose,
                    policy_version=c.policy_version,
                    action=c.action,
                    at=timestamp(c.accepted_at),
                    client_id=c.client_id,
                    channel=c.channel,
                )
                for c in await self._consent.history(claims.sub)
            ]
        )

    async def ExportMyData(
        self,
        request: privacy_pb2.ExportMyDataRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[privacy_pb2.ExportMyDataResponse]:
        claims = require_user(ctx, self._sessions)
        if self._export is None:
            raise Unimplemented("exports are not served by this build")
        # The whole document is built (and every check made) before the first message:
        # a refusal is a status, never half a document.
        document = await self._export.export(
            ExportCommand(account_id=claims.sub, ticket=request.ticket)
        )
        body = json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")
        for start in range(0, len(body), EXPORT_CHUNK_BYTES):
            yield privacy_pb2.ExportMyDataResponse(
                chunk=body[start : start + EXPORT_CHUNK_BYTES],
                schema=EXPORT_SCHEMA if start == 0 else "",
            )

    async def StreamMyDocument(
        self,
        request: privacy_pb2.StreamMyDocumentRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[privacy_pb2.StreamMyDocumentResponse]:
        claims = require_user(ctx, self._sessions)
        if not request.document_id:
            raise InvalidArgument(FieldViolation("document_id", "must not be empty"))
        if self._export is None:
            raise Unimplemented("exports are not served by this build")
        download = await self._export.document(claims.sub, request.document_id)
        info = download.info
        first = True
        async for chunk in download.chunks:
            if first:
                yield privacy_pb2.StreamMyDocumentResponse(
                    content_type=info.content_type, file_name=info.file_name, chunk=chunk
                )
                first = False
            else:
                yield privacy_pb2.StreamMyDocumentResponse(chunk=chunk)
        if first:  # an empty document still says what it is
            yield privacy_pb2.StreamMyDocumentResponse(
                content_type=info.content_type, file_name=info.file_name
            )

    # -- end consent and export --
