"""The one server interceptor: request id, caller authentication, grants, errors, metrics.

Every RPC but health and reflection also ends with one access-log line (`_log_access`).

For every RPC but health and reflection it authenticates the client from
`x-client-id` / `x-client-secret` metadata, checks the method's grant, binds
a RequestContext (end-user metadata only from clients granted
`forward-end-user`), decodes the request, runs the handler, and maps a domain
exception to a status with `google.rpc` details. Anything unexpected becomes
INTERNAL with the request id; its traceback goes to the log, never to the caller.

Undecodable requests (SECURITY.md F3). Handlers are re-registered without a
request deserializer, so grpc hands over the raw bytes and the interceptor
parses them itself, after caller authentication and the grant check. Left to
grpc, a parse error would answer UNKNOWN with the exception's class and text
and log an ERROR traceback per request: a free log flood. Here it is an
ordinary INVALID_ARGUMENT (ErrorInfo, a BadRequest violation on `request`),
logged at DEBUG and counted in `xiaohe_undecodable_requests`. Unauthenticated
garbage still gets UNAUTHENTICATED, so the parser never runs for strangers.
Health and reflection stay public, but their requests are decoded here too,
so they cannot flood the log either. The size cap is grpc's
(`max_message_bytes`, see `app.py`): an oversized message never reaches us.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from xiaohe.identity.server import context, errors
from xiaohe.identity.server.callers.grants import (
    PUBLIC_PREFIXES,
    allows,
    required_grant,
    trusts_end_user_metadata,
)
from xiaohe.identity.server.callers.registry import Client
from xiaohe.identity.server.observability.logging import ACCESS_LOGGER
from xiaohe.identity.server.transport.status import internal_status, status_code_of, to_rpc_status

log = logging.getLogger("xiaohe.identity.rpc")
access_log = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_HEADER = "x-request-id"

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Deserializer: TypeAlias = Callable[[bytes], Any]
ServicerContext: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Says what is wrong without naming the parser, its exception or the message type.
UNDECODABLE = "not a well-formed message of this method's request type"


class Authenticator(Protocol):
    """Checks client credentials."""

    async def authenticate(self, client_id: str, secret: str) -> Client:
        """The client, or ClientUnauthenticated."""
        ...


class RpcMetrics(Protocol):
    """Counts RPCs by method and status code."""

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """Record one finished RPC."""
        ...

    def undecodable_request(self, method: str) -> None:
        """Record one request whose bytes do not parse as the method's request type."""
        ...


def _new_request_id() -> str:
    return secrets.token_hex(8)


def _metadata(ctx: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in ctx.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class IdentityInterceptor(_ServerInterceptor):
    """Wraps every handler but bidirectional ones with auth, context and error mapping."""

    def __init__(self, authenticator: Authenticator, metrics: RpcMetrics | None = None) -> None:
        self._auth = authenticator
        self._metrics = metrics
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        # One wrapper per method, built on its first call: the per-call cost is the call.
        if method.startswith(PUBLIC_PREFIXES):
            wrapped = self._wrap_public(handler, method)
        else:
            wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        """The handler behind authentication, grants, decoding, context and error mapping.

        Unary, client-streaming and server-streaming methods are wrapped; a
        bidirectional one is refused outright until it is wrapped too, so a method
        added later cannot skip caller authentication.
        """
        decode = handler.request_deserializer
        serialize = handler.response_serializer
        name = method.rsplit("/", 1)[-1]
        # No request deserializer on the new handlers: the raw bytes come here and are
        # decoded after the caller is authenticated (module docstring).
        if handler.unary_unary is not None:
            uu: Callable[..., Any] = handler.unary_unary

            async def unary_unary(raw: bytes, ctx: ServicerContext) -> Any:
                return await self._serve(
                    lambda: uu(self._decode(decode, raw, name), ctx), ctx, method, name
                )

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
        if handler.stream_unary is not None:
            su: Callable[..., Any] = handler.stream_unary

            async def stream_unary(raws: AsyncIterator[bytes], ctx: ServicerContext) -> Any:
                return await self._serve(
                    lambda: su(self._decode_stream(decode, raws, name), ctx), ctx, method, name
                )

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
        if handler.unary_stream is not None:
            us: Callable[..., Any] = handler.unary_stream

            async def unary_stream(raw: bytes, ctx: ServicerContext) -> None:
                await self._serve(
                    lambda: _respond(us(self._decode(decode, raw, name), ctx), ctx),
                    ctx,
                    method,
                    name,
                )

            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)

        async def refuse(_request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "method kind not served")

        return grpc.unary_unary_rpc_method_handler(refuse)

    def _wrap_public(self, handler: Handler, method: str) -> Handler:
        """A public handler (health, reflection) behind request decoding only, of any kind."""
        decode = handler.request_deserializer
        serialize = handler.response_serializer
        name = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            uu: Callable[..., Any] = handler.unary_unary

            async def unary_unary(raw: bytes, ctx: ServicerContext) -> Any:
                return await uu(await self._decode_public(decode, raw, ctx, name), ctx)

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
        if handler.unary_stream is not None:
            us: Callable[..., Any] = handler.unary_stream

            async def unary_stream(raw: bytes, ctx: ServicerContext) -> None:
                await _respond(us(await self._decode_public(decode, raw, ctx, name), ctx), ctx)

            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
        if handler.stream_unary is not None:
            su: Callable[..., Any] = handler.stream_unary

            async def stream_unary(raws: AsyncIterator[bytes], ctx: ServicerContext) -> Any:
                return await su(self._decode_each(decode, raws, ctx, name), ctx)

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
        if handler.stream_stream is not None:
            ss: Callable[..., Any] = handler.stream_stream

            async def stream_stream(raws: AsyncIterator[bytes], ctx: ServicerContext) -> None:
                await _respond(ss(self._decode_each(decode, raws, ctx, name), ctx), ctx)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, response_serializer=serialize
            )
        return handler

    def _decode(self, decode: Deserializer | None, raw: bytes, name: str) -> Any:
        """The request parsed from raw bytes, or InvalidArgument (logged at DEBUG, counted)."""
        if decode is None:
            return raw
        try:
            return decode(raw)
        except DecodeError:
            # The caller's mistake, not ours: nothing above DEBUG, or garbage floods the log.
            log.debug("undecodable request to %s (%d bytes)", name, len(raw))
            if self._metrics is not None:
                self._metrics.undecodable_request(name)
            raise errors.InvalidArgument(errors.FieldViolation("request", UNDECODABLE)) from None

    async def _decode_public(
        self, decode: Deserializer | None, raw: bytes, ctx: ServicerContext, name: str
    ) -> Any:
        """The request of a public method, or the call aborted with INVALID_ARGUMENT."""
        try:
            return self._decode(decode, raw, name)
        except errors.InvalidArgument as exc:
            request_id = _new_request_id()
            await self._abort(
                ctx, grpc.StatusCode.INVALID_ARGUMENT, to_rpc_status(exc, request_id), request_id
            )
            raise AssertionError("unreachable") from None  # pragma: no cover

    async def _decode_each(
        self,
        decode: Deserializer | None,
        raws: AsyncIterator[bytes],
        ctx: ServicerContext,
        name: str,
    ) -> AsyncIterator[Any]:
        """The requests of a client stream, decoded one by one; the first bad one aborts."""
        async for raw in raws:
            yield await self._decode_public(decode, raw, ctx, name)

    async def _decode_stream(
        self, decode: Deserializer | None, raws: AsyncIterator[bytes], name: str
    ) -> AsyncIterator[Any]:
        """A client stream's requests, decoded as the handler reads them; a bad one raises
        InvalidArgument inside the handler, which `_serve` maps like any domain error."""
        async for raw in raws:
            yield self._decode(decode, raw, name)

    async def _serve(
        self,
        run: Callable[[], Awaitable[Any]],
        ctx: ServicerContext,
        method: str,
        name: str,
    ) -> Any:
        """Authenticate the caller, check the grant, then `run()` the handler (which decodes
        the request) under the bound context, mapping what it raises to a status."""
        metadata = _metadata(ctx)
        request_id = _new_request_id()
        started = time.perf_counter()
        token = context.bind(context.RequestContext(request_id=request_id))
        code = "OK"
        try:
            client = await self._auth.authenticate(
                metadata.get("x-client-id", ""), metadata.get("x-client-secret", "")
            )
            # Bound before the grant check: a refused call's access line names its client too.
            context.bind(self._context_for(request_id, client, metadata, ctx))
            if not allows(client.grants, method):
                raise _not_granted(client, method)
            response = await run()
            ctx.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            return response
        except errors.IdentityError as exc:
            status_code = status_code_of(exc)
            code = status_code.name
            await self._abort(ctx, status_code, to_rpc_status(exc, request_id), request_id)
        except grpc.aio.AbortError:
            code = "ABORTED_BY_HANDLER"
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away or its deadline passed
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("unexpected error in %s", method)
            await self._abort(
                ctx, grpc.StatusCode.INTERNAL, internal_status(request_id), request_id
            )
        finally:
            seconds = time.perf_counter() - started
            if self._metrics is not None:
                self._metrics.rpc(name, code, seconds)
            _log_access(method, code, seconds)
            context.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _context_for(
        request_id: str,
        client: Client,
        metadata: dict[str, str],
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> context.RequestContext:
        peer = _peer_ip(ctx.peer())
        if trusts_end_user_metadata(client.grants):
            # A missing or malformed forwarded address must not switch per-IP limits off
            # (or give each junk string its own bucket): the caller's own address counts.
            ip = _valid_ip(metadata.get("x-end-user-ip", "")) or peer
            agent = metadata.get("x-end-user-agent", "")[:200]
            device = metadata.get("x-device-id", "")[:128]
        else:
            # Not trusted to speak for end users: the caller itself is the end user.
            ip, agent, device = peer, "", ""
        return context.RequestContext(
            request_id=request_id,
            client_id=client.client_id,
            grants=client.grants,
            end_user_ip=ip,
            end_user_agent=agent,
            device_id=device,
        )

    @staticmethod
    async def _abort(
        ctx: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        status: status_pb2.Status,
        request_id: str,
    ) -> None:
        await ctx.abort(
            code,
            status.message,
            trailing_metadata=(
                ("grpc-status-details-bin", status.SerializeToString()),
                (REQUEST_ID_HEADER, request_id),
            ),
        )


async def _respond(result: Any, ctx: ServicerContext) -> None:
    """Run a streaming handler's result: await a coroutine that writes, or write what it yields."""
    if inspect.isawaitable(result):
        await result
        return
    stream: AsyncIterable[Any] = result
    async for response in stream:
        await ctx.write(response)


def _log_access(method: str, status: str, seconds: float) -> None:
    """The RPC's one access-log line; request and client id come from the bound context.

    Only the method, the status name and the duration are added: never a request
    field, so no phone, email, code or secret can reach this line. The client id is
    there only once authenticated (a claimed id may be anything, a pasted secret too).
    """
    if access_log.isEnabledFor(logging.INFO):
        ms = round(seconds * 1000, 3)
        access_log.info(
            "%s %s %.1f ms",
            method,
            status,
            ms,
            extra={"method": method, "status": status, "duration_ms": ms},
        )


def _not_granted(client: Client, method: str) -> errors.PermissionDenied:
    """The refusal naming the client, the method and the grant that would allow it.

    All three are names the caller or an operator may read (the client id is not a
    secret); an operator fixes the grants from this one line.
    """
    grant = required_grant(method)
    if grant is None:
        return errors.PermissionDenied(f"no grant allows {method}", method=method)
    return errors.PermissionDenied(
        f"client {client.client_id} is not granted {method}: it needs the grant {grant!r}",
        method=method,
        grant=grant,
    )


def _valid_ip(text: str) -> str:
    """The address in canonical form, or "" when text is not an IP address."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return ""


def _peer_ip(peer: str) -> str:
    """`ipv4:1.2.3.4:5678` / `ipv6:[::1]:5678` / `unix:...` -> the address part."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""
