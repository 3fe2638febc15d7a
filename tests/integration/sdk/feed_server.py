"""An in-process DirectoryService that serves WatchRevocations per its contract, scripted by tests.

The contract (directory.proto and issue 13): the first message of every stream is a
heartbeat with the current cursor; then one message per revoked session; a cursor
the feed no longer covers gets one `resync_required` message and the stream ends
OK; reconnecting with a covered cursor replays every event after it. The tests of
the SDK's follower run against this servicer over a real grpc.aio server and
channel; the end-to-end test runs against `xiaohe-identity serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from xiaohe.identity.v1 import directory_pb2, directory_pb2_grpc


def _timestamp(at: float) -> Timestamp:
    stamp = Timestamp()
    stamp.seconds = int(at)
    stamp.nanos = int((at - int(at)) * 1e9)
    return stamp


@dataclass
class Connection:
    """One WatchRevocations call as the server saw it."""

    since_cursor: str
    metadata: dict[str, str]
    commands: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


class ScriptedFeed(directory_pb2_grpc.DirectoryServiceServicer):
    """Revocations the test announces with `revoke`; `end`, `fail`, `go_silent` act on streams.

    `now` is the clock of heartbeats (the test's fake clock). Cursors are "c<n>";
    a cursor below `floor` is answered with resync_required.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.events: list[tuple[str, str]] = []  # (cursor, session id)
        self.connections: list[Connection] = []
        self.floor = 0
        self.refuse_with: grpc.StatusCode | None = None

    def _cursor(self) -> str:
        return f"c{len(self.events)}"

    def revoke(self, session_id: str) -> None:
        """Append a revocation; every open stream sends it."""
        self.events.append((f"c{len(self.events) + 1}", session_id))
        for connection in self.connections:
            connection.commands.put_nowait("event")

    def end_streams(self, how: str = "end") -> None:
        """End every open stream: "end" (OK) or "fail" (UNAVAILABLE)."""
        for connection in self.connections:
            connection.commands.put_nowait(how)

    def _message(self, index: int) -> directory_pb2.WatchRevocationsResponse:
        cursor, session_id = self.events[index]
        return directory_pb2.WatchRevocationsResponse(
            cursor=cursor,
            revocation=directory_pb2.Revocation(
                session_id=session_id,
                account_id="acc_1",
                reason="logout",
                revoked_at=_timestamp(self._now()),
            ),
        )

    async def WatchRevocations(
        self,
        request: directory_pb2.WatchRevocationsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[directory_pb2.WatchRevocationsResponse]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        connection = Connection(request.since_cursor, metadata)
        self.connections.append(connection)
        if self.refuse_with is not None:
            await context.abort(self.refuse_with, "refused by the test")
        sent = len(self.events)
        if request.since_cursor:
            if not request.since_cursor.startswith("c"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad cursor")
            position = int(request.since_cursor[1:])
            if position < self.floor:
                yield directory_pb2.WatchRevocationsResponse(resync_required=True)
                return
            sent = position
        yield directory_pb2.WatchRevocationsResponse(
            cursor=self._cursor(), heartbeat=_timestamp(self._now())
        )
        while True:
            while sent < len(self.events):
                yield self._message(sent)
                sent += 1
            command = await connection.commands.get()
            if command == "end":
                return
            if command == "fail":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server stopping")
            if command == "heartbeat":
                yield directory_pb2.WatchRevocationsResponse(
                    cursor=self._cursor(), heartbeat=_timestamp(self._now())
                )


async def start_feed_server(feed: ScriptedFeed) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server on a free loopback port serving `feed`."""
    server = grpc.aio.server()
    directory_pb2_grpc.add_DirectoryServiceServicer_to_server(feed, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
