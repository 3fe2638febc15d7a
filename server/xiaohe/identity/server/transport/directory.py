"""DirectoryService servicer: identity fields and ended sessions for business systems.

Proto <-> commands only: the field rules live in flows/directory.py, the
revocation feed in sessions/feed.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.callers.grants import IDENTITY_FIELDS
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.flows.directory import DirectoryFlow, IdentityQuery, ReleasedIdentity
from xiaohe.identity.server.sessions.feed import FeedItem, RevocationFeed
from xiaohe.identity.server.transport.timestamps import timestamp
from xiaohe.identity.v1 import common_pb2, directory_pb2, directory_pb2_grpc

_PREFIX = "IDENTITY_FIELD_"


def field_names(values: Iterable[directory_pb2.IdentityField.ValueType]) -> tuple[str, ...]:
    """Field names (`login_name`, ...) of the request's IdentityField values; unknown refused."""
    names: list[str] = []
    for value in values:
        try:
            name = directory_pb2.IdentityField.Name(value).removeprefix(_PREFIX).lower()
        except ValueError:
            name = ""
        if name not in IDENTITY_FIELDS:
            raise InvalidArgument(
                FieldViolation(
                    "fields", "each field must be a known IdentityField, not UNSPECIFIED"
                )
            )
        names.append(name)
    return tuple(names)


def field_value(name: str) -> directory_pb2.IdentityField.ValueType:
    """The IdentityField of a field name."""
    return directory_pb2.IdentityField.Value(_PREFIX + name.upper())


def identity_message(identity: ReleasedIdentity) -> directory_pb2.Identity:
    """The proto Identity: only released fields are set."""
    message = directory_pb2.Identity(
        account_id=identity.account_id,
        released=[field_value(n) for n in identity.released],
        masked=[field_value(n) for n in identity.masked],
    )
    for name, value in identity.values.items():
        if name == "subject_type":
            message.subject_type = common_pb2.SubjectType.Value(f"SUBJECT_TYPE_{value}")
        elif name == "id_type":
            message.id_type = common_pb2.IdType.Value(f"ID_TYPE_{value or 'UNSPECIFIED'}")
        elif name == "real_name_level":
            message.real_name_level = int(value)
        else:
            setattr(message, name, str(value))
    return message


def _query(
    account_ids: Iterable[str],
    fields: Iterable[directory_pb2.IdentityField.ValueType],
    purpose: str,
) -> IdentityQuery:
    rc = context.current()
    return IdentityQuery(
        client_id=rc.client_id,
        grants=rc.grants,
        account_ids=tuple(account_ids),
        fields=field_names(fields),
        purpose=purpose,
    )


def feed_message(item: FeedItem) -> directory_pb2.WatchRevocationsResponse:
    """One message of a revocation watch."""
    message = directory_pb2.WatchRevocationsResponse(cursor=item.cursor)
    if item.resync_required:
        message.resync_required = True
    elif item.revoked is None:
        message.heartbeat.CopyFrom(timestamp(item.at))
    else:
        message.revocation.CopyFrom(
            directory_pb2.Revocation(
                session_id=item.revoked.session_id,
                account_id=item.revoked.account_id,
                reason=item.revoked.reason,
                revoked_at=timestamp(item.at),
            )
        )
    return message


class DirectoryServicer(directory_pb2_grpc.DirectoryServiceServicer):
    """Who an account is, limited to the calling client's field grants; which sessions ended."""

    def __init__(self, directory: DirectoryFlow, feed: RevocationFeed) -> None:
        self._directory = directory
        self._feed = feed

    async def GetIdentity(
        self, request: directory_pb2.GetIdentityRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> directory_pb2.GetIdentityResponse:
        if not request.account_id:
            raise InvalidArgument(FieldViolation("account_id", "is required"))
        query = _query([request.account_id], request.fields, request.purpose)
        identity = await self._directory.get_identity(query)
        return directory_pb2.GetIdentityResponse(identity=identity_message(identity))

    async def BatchGetIdentities(
        self,
        request: directory_pb2.BatchGetIdentitiesRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> directory_pb2.BatchGetIdentitiesResponse:
        query = _query(request.account_ids, request.fields, request.purpose)
        answer = await self._directory.batch_get_identities(query)
        return directory_pb2.BatchGetIdentitiesResponse(
            identities=[identity_message(i) for i in answer.identities],
            not_found=list(answer.not_found),
        )

    async def WatchRevocations(
        self,
        request: directory_pb2.WatchRevocationsRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[directory_pb2.WatchRevocationsResponse]:
        """Ended sessions from `since_cursor` on (empty: from now), with heartbeats."""
        items = self._feed.watch(context.current().client_id, request.since_cursor)
        async for item in items:
            yield feed_message(item)
