"""AdminService servicer: API clients, the audit chain, message deliveries and prefix blocks."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.audit.checkpoints import ChainAnchor
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.audit.sink import record_quietly
from xiaohe.identity.server.callers.registry import Client, ClientRegistry
from xiaohe.identity.server.delivery.lifecycle import DeliveryLog, DeliveryRecord
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument, Unimplemented
from xiaohe.identity.server.flows.rights_requests import ResolveRequestCommand, RightsRequestFlow
from xiaohe.identity.server.ratelimit.prefix_watch import PrefixWatch
from xiaohe.identity.server.ratelimit.pumping import PrefixBlock
from xiaohe.identity.server.transport.rights_requests import (
    outcome_from_proto,
    request_to_proto,
    state_from_proto,
)
from xiaohe.identity.server.transport.timestamps import timestamp
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("xiaohe.identity.admin")


def client_to_proto(client: Client) -> admin_pb2.Client:
    """The proto view of a client (never its secret)."""
    return admin_pb2.Client(
        client_id=client.client_id,
        name=client.name,
        grants=sorted(client.grants),
        created_at=timestamp(client.created_at),
        revoked=client.revoked,
    )


# -- message deliveries (issue 10) --

MAX_MESSAGE_ID_LENGTH = 64


def delivery_to_proto(record: DeliveryRecord) -> admin_pb2.Delivery:
    """The proto view of a message's lifecycle (it holds no destination or text)."""
    out = admin_pb2.Delivery(
        message_id=record.message_id,
        channel=record.channel,
        purpose=record.purpose,
        status=record.status,
        provider=record.provider,
        provider_message_id=record.provider_message_id,
        delivery=record.delivery,
        detail=record.detail,
        attempts=record.attempts,
        created_at=timestamp(record.created_at),
    )
    for name in ("sent_at", "done_at", "reported_at"):
        value = getattr(record, name)
        if value is not None:
            getattr(out, name).CopyFrom(timestamp(value))
    return out


# -- end message deliveries --
def prefix_block_to_proto(block: PrefixBlock) -> admin_pb2.PrefixBlock:
    """The proto view of a prefix block (a prefix names 10,000 numbers, never one)."""
    return admin_pb2.PrefixBlock(
        prefix=block.prefix,
        reason=block.reason,
        blocked_at=timestamp(block.blocked_at),
        until=timestamp(block.until),
        sent=block.sent,
        verified=block.verified,
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Operator API."""

    def __init__(
        self,
        registry: ClientRegistry,
        audit: AuditLog,
        *,
        deliveries: DeliveryLog | None = None,
        prefix_watch: PrefixWatch | None = None,
        rights: RightsRequestFlow | None = None,
    ) -> None:
        self._registry = registry
        self._audit = audit
        self._deliveries = deliveries
        self._prefix_watch = prefix_watch
        self._rights = rights

    async def _record(self, action: str, target: str, outcome: str) -> None:
        """Audit an operator action that has already taken effect; a failure is logged only,
        so the caller still learns the result (a new client's secret is shown once)."""
        await record_quietly(self._audit, action, target, outcome, log)

    async def CreateClient(
        self, request: admin_pb2.CreateClientRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CreateClientResponse:
        client, secret = await self._registry.create(request.name, list(request.grants))
        await self._record("client.create", client.client_id, "ok")
        return admin_pb2.CreateClientResponse(client=client_to_proto(client), client_secret=secret)

    async def ListClients(
        self, request: admin_pb2.ListClientsRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListClientsResponse:
        return admin_pb2.ListClientsResponse(
            clients=[client_to_proto(c) for c in await self._registry.list_all()]
        )

    async def RevokeClient(
        self, request: admin_pb2.RevokeClientRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RevokeClientResponse:
        client = await self._registry.revoke(request.client_id)
        await self._record("client.revoke", client.client_id, "ok")
        return admin_pb2.RevokeClientResponse(client=client_to_proto(client))

    async def SetClientGrants(
        self, request: admin_pb2.SetClientGrantsRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.SetClientGrantsResponse:
        client = await self._registry.set_grants(request.client_id, list(request.grants))
        await self._record("client.grants", client.client_id, "ok")
        return admin_pb2.SetClientGrantsResponse(client=client_to_proto(client))

    async def VerifyAuditChain(
        self, request: admin_pb2.VerifyAuditChainRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.VerifyAuditChainResponse:
        anchor = None
        if request.HasField("anchor"):
            anchor = ChainAnchor.parse(request.anchor.seq, request.anchor.mac)
        report = await self._audit.verify_chain(anchor)
        return admin_pb2.VerifyAuditChainResponse(
            intact=report.intact,
            records_checked=report.records_checked,
            first_broken_seq=report.first_broken_seq,
            checkpoints_checked=report.checkpoints_checked,
            last_checkpoint_seq=report.last_checkpoint_seq,
            truncated=report.truncated,
            first_bad_checkpoint_seq=report.first_bad_checkpoint_seq,
            legacy_records=report.legacy_records,
            pruned_through=report.pruned_through,
        )

    # -- message deliveries (issue 10) --

    async def GetDelivery(
        self, request: admin_pb2.GetDeliveryRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetDeliveryResponse:
        if self._deliveries is None:
            raise Unimplemented("message deliveries are not served here")
        if not 0 < len(request.message_id) <= MAX_MESSAGE_ID_LENGTH:
            raise InvalidArgument(
                FieldViolation("message_id", f"1 to {MAX_MESSAGE_ID_LENGTH} characters")
            )
        record = await self._deliveries.get(request.message_id)
        return admin_pb2.GetDeliveryResponse(delivery=delivery_to_proto(record))

    # -- end message deliveries --
    # --- SMS-pumping prefix blocks -------------------------------------------------

    def _watch(self) -> PrefixWatch:
        if self._prefix_watch is None:
            raise Unimplemented("prefix blocks are not served here")
        return self._prefix_watch

    async def ListPrefixBlocks(
        self, request: admin_pb2.ListPrefixBlocksRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListPrefixBlocksResponse:
        blocks = await self._watch().list_blocks()
        return admin_pb2.ListPrefixBlocksResponse(blocks=[prefix_block_to_proto(b) for b in blocks])

    async def LiftPrefixBlock(
        self, request: admin_pb2.LiftPrefixBlockRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.LiftPrefixBlockResponse:
        watch = self._watch()
        lifted = await watch.lift(request.prefix)
        await self._record("pumping.lift", request.prefix.strip(), "ok" if lifted else "none")
        return admin_pb2.LiftPrefixBlockResponse(lifted=lifted)

    # -- issue 14: rights requests --

    def _rights_flow(self) -> RightsRequestFlow:
        if self._rights is None:
            raise Unimplemented("rights requests are not served here")
        return self._rights

    async def ListRightsRequests(
        self,
        request: admin_pb2.ListRightsRequestsRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ListRightsRequestsResponse:
        flow = self._rights_flow()
        page = await flow.queue(
            state=state_from_proto(request.state),
            overdue_only=request.overdue_only,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return admin_pb2.ListRightsRequestsResponse(
            requests=[request_to_proto(r, flow, for_operator=True) for r in page.requests],
            next_page_token=page.next_page_token,
        )

    async def ResolveRequest(
        self, request: admin_pb2.ResolveRequestRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ResolveRequestResponse:
        flow = self._rights_flow()
        resolved = await flow.resolve(
            ResolveRequestCommand(
                request_id=request.request_id,
                outcome=outcome_from_proto(request.outcome),
                note=request.note,
                client_id=context.current().client_id,
            )
        )
        return admin_pb2.ResolveRequestResponse(
            request=request_to_proto(resolved, flow, for_operator=True)
        )

    # -- end rights requests --
