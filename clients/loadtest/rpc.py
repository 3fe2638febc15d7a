"""Synchronous gRPC calls to Xiaohe Identity, timed, with the status code as the only outcome.

The generated sync stubs are used rather than the asyncio SDK because Locust runs
on gevent: `grpc.experimental.gevent` makes the sync stubs cooperative, while
`grpc.aio` needs an asyncio loop that gevent does not drive. The same calls serve
the driver's seeding, which runs in ordinary threads.

A failed call raises `CallFailed` carrying the RPC name and status code only: the
server's message and details never travel further, so nothing a request carried
(a number, a login name) can reach a log line or the report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from xiaohe.identity.v1 import (
    accounts_pb2_grpc,
    auth_pb2_grpc,
    codes_pb2_grpc,
    privacy_pb2_grpc,
)

CLIENT_ID_ENV = "XIAOHE_LOADTEST_CLIENT_ID"
CLIENT_SECRET_ENV = "XIAOHE_LOADTEST_CLIENT_SECRET"  # noqa: S105 - a variable's name

Recorder = Callable[[str, float, int, str | None], None]
"""Receives (rpc, milliseconds, response bytes, error label or None) for every call."""

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)


def open_channel(target: str) -> grpc.Channel:
    """A plaintext channel to `target`: one `host:port`, or several separated by commas,
    which the channel balances call by call (gRPC round robin), as a client of a
    deployment of several hosts would."""
    if "," not in target:
        return grpc.insecure_channel(target)
    return grpc.insecure_channel("ipv4:" + target, options=[("grpc.lb_policy_name", "round_robin")])


@dataclass(frozen=True)
class ClientCredentials:
    """An API client's id and secret (sent as `x-client-id` / `x-client-secret`)."""

    client_id: str
    client_secret: str = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> ClientCredentials:
        """Read the JSON that `clients create` prints (or `bootstrap-client.json`)."""
        saved = json.loads(path.read_text())
        return cls(str(saved["client_id"]), str(saved["client_secret"]))

    @classmethod
    def from_env(cls) -> ClientCredentials | None:
        """The credentials in the environment, if both variables are set."""
        client_id, secret = os.environ.get(CLIENT_ID_ENV), os.environ.get(CLIENT_SECRET_ENV)
        if not client_id or not secret:
            return None
        return cls(client_id, secret)

    def to_env(self) -> dict[str, str]:
        """The environment variables `from_env` reads."""
        return {CLIENT_ID_ENV: self.client_id, CLIENT_SECRET_ENV: self.client_secret}


class CallFailed(Exception):
    """An RPC ended with a status other than OK."""

    def __init__(self, rpc: str, status: grpc.StatusCode) -> None:
        super().__init__(f"{rpc} failed: {status.name}")
        self.rpc = rpc
        self.status = status


class FlowFailed(Exception):
    """A flow could not go on for a reason outside any RPC (e.g. no code in the outbox)."""


def _ignore(_rpc: str, _ms: float, _size: int, _error: str | None) -> None:
    return None


class Identity:
    """The stubs over one channel, called with one client's credentials."""

    def __init__(
        self,
        channel: grpc.Channel,
        credentials: ClientCredentials,
        recorder: Recorder | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.codes = codes_pb2_grpc.CodeServiceStub(channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.accounts = accounts_pb2_grpc.AccountServiceStub(channel)
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        self._client: tuple[tuple[str, str], ...] = (
            ("x-client-id", credentials.client_id),
            ("x-client-secret", credentials.client_secret),
        )
        self._record = recorder or _ignore
        self._timeout = timeout

    def call(
        self,
        rpc: str,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        end_user_ip: str | None = None,
        provoked: bool = False,
    ) -> _Resp:
        """Call `method`, record the outcome under `rpc`; CallFailed on any non-OK status.

        `provoked` marks a call the scenario expects to be refused (a resend inside
        the cooldown, a malformed number): its refusal is labelled as such.
        """
        metadata = self._client
        if end_user_ip is not None:
            metadata = (*metadata, ("x-end-user-ip", end_user_ip))
        started = time.perf_counter()
        try:
            response = method(request, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            status = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            label = f"{status.name} (provoked)" if provoked else status.name
            self._record(rpc, elapsed, 0, label)
            raise CallFailed(rpc, status) from None
        self._record(rpc, (time.perf_counter() - started) * 1000, response.ByteSize(), None)
        return response
