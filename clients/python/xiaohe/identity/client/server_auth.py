"""Authenticating the callers of a business system's own gRPC service with Xiaohe Identity tokens.

`BearerAuthInterceptor` is a `grpc.aio` server interceptor: every call to the
service must carry `authorization: Bearer <access token>`, which a `TokenVerifier`
checks locally (signature, expiry, the verifier's audience, its required `amr`,
and revocation when the verifier follows the feed). On top of that the interceptor
can require authentication methods (`amr`, e.g. "otp") and a minimum real-name
level for the whole service. The handler then reads the verified claims with
`current_claims()`, a contextvar set for the duration of the call.

Answers (the token's text never appears in them, nor in a log):

- UNAUTHENTICATED: no bearer token, or one that does not verify (expired, wrong
  audience, bad signature, revoked, issued before a revocation resync); the
  message names the reason, and the caller refreshes or signs in again;
- PERMISSION_DENIED: a valid token of a session that does not meet a requirement
  (real-name level, authentication methods, a restricted session), naming it;
- UNAVAILABLE: the verifier cannot decide right now (the revocation feed is stale,
  or the signing keys cannot be fetched), so the caller retries later.

Methods in `public_methods` (full names, "/package.Service/Method"; the gRPC health
service by default) pass without a token and without claims.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from xiaohe.identity.client.verifier import TokenVerifier
from xiaohe.identity.tokens.jwt import Claims, InvalidToken

log = logging.getLogger("xiaohe.identity.client.server_auth")

HEALTH_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")

_claims: ContextVar[Claims | None] = ContextVar("xiaohe_identity_claims", default=None)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_PERMISSION_REASONS = {
    "auth_methods": "the session lacks a required authentication method",
    "restricted": "the session is restricted until the user completes a step in the identity app",
}
_UNAVAILABLE_REASONS = {
    "revocations_stale": "token revocation status is unknown right now; retry later",
}


def current_claims() -> Claims:
    """The verified claims of the call being served; LookupError outside an authenticated call."""
    claims = _claims.get()
    if claims is None:
        raise LookupError("no authenticated call is being served in this context")
    return claims


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the single `authorization: Bearer …` header, or None."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class BearerAuthInterceptor(_ServerInterceptor):
    """Refuses calls without a valid access token; the claims go to `current_claims()`.

    `verifier` fixes the audience (and its own `required_auth_methods`);
    `required_auth_methods` and `min_real_name_level` are further requirements of
    this service, answered with PERMISSION_DENIED naming what is missing.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        required_auth_methods: Sequence[str] = (),
        min_real_name_level: int = 0,
        public_methods: Collection[str] = HEALTH_METHODS,
    ) -> None:
        if min_real_name_level < 0:
            raise ValueError("min_real_name_level must not be negative")
        self._verifier = verifier
        self._required_amr = tuple(dict.fromkeys(required_auth_methods))
        self._min_rn_level = min_real_name_level
        self._public = frozenset(public_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        """The method's handler, wrapped to authenticate first (public methods unwrapped)."""
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._public:
            return handler
        metadata = handler_call_details.invocation_metadata
        return _wrap(handler, lambda ctx: self.authenticate(_bearer(metadata), ctx))

    async def authenticate(self, token: str | None, context: _Context) -> Claims:
        """The claims of `token` if it meets every requirement; otherwise aborts the call."""
        if token is None:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        try:
            claims = await self._verifier.verify(token)
        except InvalidToken as exc:
            if exc.reason in _UNAVAILABLE_REASONS:
                await _abort(context, grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE_REASONS[exc.reason])
            if exc.reason in _PERMISSION_REASONS:
                await _abort(
                    context, grpc.StatusCode.PERMISSION_DENIED, _PERMISSION_REASONS[exc.reason]
                )
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc.reason}")
        except Exception as exc:  # the keys could not be fetched (IdentityError, or a custom
            # fetcher's own error): the token may be fine, so the caller retries
            log.warning("token verification failed: %s", type(exc).__name__)
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the identity service's signing keys cannot be fetched; retry later",
            )
        missing = [m for m in self._required_amr if m not in claims.amr]
        if missing:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "this service requires signing in with: " + ", ".join(missing),
            )
        if claims.rn_level < self._min_rn_level:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this service requires real-name level {self._min_rn_level} or higher",
            )
        return claims


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


Authenticate: TypeAlias = Callable[[_Context], Awaitable[Claims]]


def _wrap(handler: _Handler, authenticate: Authenticate) -> _Handler:
    """`handler` with each of its behaviours authenticating first and setting the claims."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_result(handler.unary_unary, authenticate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_result(handler.stream_unary, authenticate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streamed_result(handler.unary_stream, authenticate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streamed_result(handler.stream_stream, authenticate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # pragma: no cover - a handler always has one behaviour


def _unary_result(behaviour: Any, authenticate: Authenticate) -> Any:
    """A behaviour that answers one message (unary-unary or stream-unary)."""

    async def call(request: Any, context: _Context) -> Any:
        claims = await authenticate(context)
        reset = _claims.set(claims)
        try:
            return await behaviour(request, context)
        finally:
            _claims.reset(reset)

    return call


def _streamed_result(behaviour: Any, authenticate: Authenticate) -> Any:
    """A behaviour that answers a stream: an async generator, or a coroutine using `write`."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            claims = await authenticate(context)
            reset = _claims.set(claims)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                # A generator closed from another context (e.g. collected) cannot reset.
                with contextlib.suppress(ValueError):
                    _claims.reset(reset)

        return stream
    return _unary_result(behaviour, authenticate)


__all__ = ["HEALTH_METHODS", "BearerAuthInterceptor", "current_claims"]
