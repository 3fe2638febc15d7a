"""Rights requests on the wire: proto enums and messages, shared by PrivacyService
(the person) and AdminService (operators)."""

from __future__ import annotations

from xiaohe.identity.server.flows.rights_requests import RightsRequestFlow
from xiaohe.identity.server.privacy.requests import (
    Outcome,
    RequestKind,
    RequestState,
    RightsRequest,
)
from xiaohe.identity.server.transport.enums import from_proto, to_proto
from xiaohe.identity.server.transport.timestamps import timestamp
from xiaohe.identity.v1 import privacy_pb2

KIND_PREFIX = "RIGHTS_REQUEST_KIND_"
STATE_PREFIX = "RIGHTS_REQUEST_STATE_"
OUTCOME_PREFIX = "RIGHTS_REQUEST_OUTCOME_"


def kind_from_proto(value: int) -> RequestKind:
    """The kind of a FileRequest; UNSPECIFIED or unknown is InvalidArgument on `kind`."""
    return from_proto(privacy_pb2.RightsRequestKind.Name, KIND_PREFIX, RequestKind, value, "kind")


def outcome_from_proto(value: int) -> Outcome:
    """The outcome of a ResolveRequest; UNSPECIFIED or unknown is InvalidArgument on `outcome`."""
    return from_proto(
        privacy_pb2.RightsRequestOutcome.Name, OUTCOME_PREFIX, Outcome, value, "outcome"
    )


def state_from_proto(value: int) -> RequestState | None:
    """The state filter of a listing: None for UNSPECIFIED (every state)."""
    if value == privacy_pb2.RIGHTS_REQUEST_STATE_UNSPECIFIED:
        return None
    return from_proto(
        privacy_pb2.RightsRequestState.Name, STATE_PREFIX, RequestState, value, "state"
    )


def request_to_proto(
    request: RightsRequest, flow: RightsRequestFlow, *, for_operator: bool
) -> privacy_pb2.RightsRequest:
    """The proto view of a request; whose it is and the clients only for operators."""
    out = privacy_pb2.RightsRequest(
        request_id=request.request_id,
        kind=to_proto(privacy_pb2.RightsRequestKind.Value, KIND_PREFIX, request.kind),
        state=to_proto(privacy_pb2.RightsRequestState.Value, STATE_PREFIX, request.state),
        detail=request.detail,
        filed_at=timestamp(request.filed_at),
        due_date=request.due_on.isoformat(),
        late_at=timestamp(request.due_at),
        overdue=flow.is_overdue(request),
        note=request.note,
        texts_erased=request.erased,
    )
    if request.outcome is not None:
        out.outcome = to_proto(
            privacy_pb2.RightsRequestOutcome.Value, OUTCOME_PREFIX, request.outcome
        )
    if request.resolved_at is not None:
        out.resolved_at.CopyFrom(timestamp(request.resolved_at))
    if for_operator:
        out.account_id = request.account_id
        out.client_id = request.client_id
        out.resolved_by = request.resolved_by
    return out
