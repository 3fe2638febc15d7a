"""The workbench service: its methods, and how it is started beside an `IdentityClient`.

To stay free of code generation, its methods use protobuf's well-known types
(`google.protobuf.Empty` in, `google.protobuf.Struct` out) through a generic
handler; a real service would define its own messages in a .proto file. Methods
(service `xiaohe.examples.workbench.v1.Workbench`):

- `WhoAmI(Empty) -> Struct`: the caller's account, session, subject type,
  real-name level and authentication methods, from the token's claims;
- `AddTask(Struct{"title"}) -> Struct`: adds a task to the caller's own list;
- `ListTasks(Empty) -> Struct{"tasks"}`: the caller's tasks.

The gRPC health service answers without a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from xiaohe.identity.client import BearerAuthInterceptor, IdentityClient, current_claims

SERVICE = "xiaohe.examples.workbench.v1.Workbench"
MAX_TASKS = 100
MAX_TITLE = 200

log = logging.getLogger("workbench")

_Context = Any  # grpc.aio.ServicerContext


class Workbench:
    """Per-account task lists in memory; every method acts for the token's account only."""

    def __init__(self) -> None:
        self._tasks: dict[str, list[str]] = {}

    async def who_am_i(self, request: Empty, context: _Context) -> Struct:
        """The verified claims of the caller's token."""
        claims = current_claims()
        out = Struct()
        out.update(
            {
                "account_id": claims.sub,
                "session_id": claims.sid,
                "subject_type": claims.subject_type,
                "real_name_level": claims.rn_level,
                "auth_methods": list(claims.amr),
            }
        )
        return out

    async def add_task(self, request: Struct, context: _Context) -> Struct:
        """Add `title` to the caller's tasks; INVALID_ARGUMENT for a missing or long title."""
        title = request.fields["title"].string_value if "title" in request.fields else ""
        if not title.strip() or len(title) > MAX_TITLE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"title: 1-{MAX_TITLE} characters"
            )
        tasks = self._tasks.setdefault(current_claims().sub, [])
        if len(tasks) >= MAX_TASKS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many tasks")
        tasks.append(title.strip())
        out = Struct()
        out.update({"count": len(tasks)})
        return out

    async def list_tasks(self, request: Empty, context: _Context) -> Struct:
        """The caller's tasks."""
        out = Struct()
        out.update({"tasks": list(self._tasks.get(current_claims().sub, []))})
        return out

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The generic handler serving the methods above."""
        empty_in: dict[str, Any] = {
            "request_deserializer": Empty.FromString,
            "response_serializer": Struct.SerializeToString,
        }
        struct_in: dict[str, Any] = {
            "request_deserializer": Struct.FromString,
            "response_serializer": Struct.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "WhoAmI": grpc.unary_unary_rpc_method_handler(self.who_am_i, **empty_in),
                "AddTask": grpc.unary_unary_rpc_method_handler(self.add_task, **struct_in),
                "ListTasks": grpc.unary_unary_rpc_method_handler(self.list_tasks, **empty_in),
            },
        )


@dataclass
class RunningWorkbench:
    """A started workbench: its server, port, and the task following revocations."""

    server: grpc.aio.Server
    port: int
    follower: asyncio.Task[None]

    async def stop(self, grace: float = 5.0) -> None:
        """Finish in-flight calls within `grace`, then stop following revocations."""
        await self.server.stop(grace)
        self.follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.follower


async def start_workbench(
    identity: IdentityClient,
    *,
    listen: str,
    audience: str,
    issuer: str | None = None,
    required_auth_methods: Sequence[str] = (),
    min_real_name_level: int = 0,
    max_staleness: float | None = 15.0,
    ready_timeout: float = 30.0,
) -> RunningWorkbench:
    """Fetch the keys, follow revocations until the first heartbeat, then serve on `listen`.

    Serving starts only once the verifier knows every revocation from now on, so no
    call is answered from a blind verifier; a follower that fails for good (the
    client lacks the `validate` grant) fails the start with its error.
    """
    verifier = identity.token_verifier(audience, issuer=issuer)
    await verifier.refresh_keys()
    follower = asyncio.create_task(
        verifier.follow_revocations(identity, max_staleness=max_staleness)
    )
    revocations = verifier.revocations
    assert revocations is not None  # set by follow_revocations
    ready = asyncio.create_task(revocations.ready.wait())
    done, _ = await asyncio.wait(
        {ready, follower}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if ready not in done:
        ready.cancel()
        if follower in done:
            follower.result()  # raises the follower's error
        follower.cancel()
        raise TimeoutError("the revocation feed sent no heartbeat in time")

    server = grpc.aio.server(
        interceptors=[
            BearerAuthInterceptor(
                verifier,
                required_auth_methods=required_auth_methods,
                min_real_name_level=min_real_name_level,
            )
        ]
    )
    server.add_generic_rpc_handlers((Workbench().handler(),))
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("workbench listening, port %d", port)
    return RunningWorkbench(server, port, follower)


__all__ = ["SERVICE", "RunningWorkbench", "Workbench", "start_workbench"]
