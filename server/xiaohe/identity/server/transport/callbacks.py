"""The HTTP callback listener: what the outside world only exchanges over HTTP (aiohttp).

SMS platforms push delivery receipts to a URL we give them, and gateways and
HTTP-only systems fetch the token-signing keys (JWKS) here (see jwks_http.py).
Each worker process runs one listener next to its gRPC server, on its own port
(`callback_listen`, off when empty), sharing it with the other workers through
SO_REUSEPORT as the gRPC port is shared; it stops with the worker.

Routes (a provider's routes exist only when its secret is set):

    GET  /healthz                                   200 SERVING, 503 while stopping
    GET  /.well-known/jwks.json                     the signing keys (when given public keys)
    POST /callbacks/aliyun/{secret}/sms-report      Aliyun SmsReport push
    POST /callbacks/aliyun/sms-report               the same, secret in a header
    POST /callbacks/tencent/{secret}/sms-status     Tencent Cloud SMS status callback
    POST /callbacks/tencent/sms-status              the same, secret in a header

Why a secret in the path (SECURITY X1). The platforms sign nothing and take only a
URL, so the URL itself must carry the proof: a per-provider random secret, compared
in constant time, also accepted in the `X-Xiaohe-Callback-Secret` header for a proxy
that can add one. A wrong secret, and a source address outside the provider's
optional allowlist, get the same 404 as a path that does not exist, before the body
is read, and change nothing. The access log is off: it would write the secret (and
the path is all it would say).

The answers, per request that passes those checks:

- a body over `max_body_bytes`: 413 (the platform's retries cannot fix it);
- anything else we could read, the platform's own acknowledgement, HTTP 200 (Aliyun
  `{"code":0,"msg":"接收成功"}`, Tencent `{"result":0,"errmsg":"OK"}`): recorded
  receipts, duplicates, ids we do not know, malformed items and a body that is not
  JSON at all are all acknowledged, because a retry of the same bytes cannot change
  the outcome; what was skipped is counted (`xiaohe_delivery_receipts_ignored`,
  `xiaohe_callback_requests`), never logged with its content;
- our own failure (the database unreachable): 503 with the platform's failure shape,
  so the platform retries later.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from xiaohe.identity.server.delivery.receipt_formats import (
    PROVIDER_ALIYUN,
    PROVIDER_TENCENT,
    ParsedPush,
    parse_aliyun_sms_report,
    parse_tencent_sms_status,
)
from xiaohe.identity.server.delivery.receipts import DeliveryReceipts
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.transport.jwks_http import JWKS_PATH, PublicKeys, jwks_handler

log = logging.getLogger("xiaohe.identity.callbacks")

SECRET_HEADER = "X-Xiaohe-Callback-Secret"  # noqa: S105 - a header name
HEALTH_PATH = "/healthz"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALIYUN_ACK: Mapping[str, object] = {"code": 0, "msg": "接收成功"}
ALIYUN_RETRY: Mapping[str, object] = {"code": 1, "msg": "稍后重试"}
TENCENT_ACK: Mapping[str, object] = {"result": 0, "errmsg": "OK"}
TENCENT_RETRY: Mapping[str, object] = {"result": 1, "errmsg": "retry later"}


class CallbackMetrics(Protocol):
    """Counts callback requests and skipped receipts (see observability/metrics.py)."""

    def callback_request(self, route: str, outcome: str) -> None:
        """One request and how it was answered."""
        ...

    def receipt_ignored(self, source: str, reason: str, count: int = 1) -> None:
        """Receipts that changed nothing."""
        ...


@dataclass(frozen=True)
class PlatformRoute:
    """One platform's receipt endpoint: where, its secret, who may call, how to read and answer."""

    provider: str
    kind: str
    secret: str = field(repr=False)
    allowed_sources: tuple[IpNetwork, ...]
    parse: Callable[[object], ParsedPush]
    ack: Mapping[str, object]
    retry: Mapping[str, object]

    @property
    def name(self) -> str:
        """The metrics label: `aliyun.sms-report`."""
        return f"{self.provider}.{self.kind}"


def parse_networks(cidrs: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """Networks from CIDR strings ("203.0.113.0/24", "2001:db8::/32"); ValueError if one is bad."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def aliyun_route(secret: str, allowed: tuple[IpNetwork, ...] = ()) -> PlatformRoute:
    """Aliyun SMS receipts (SmsReport HTTP batch push)."""
    return PlatformRoute(
        PROVIDER_ALIYUN,
        "sms-report",
        secret,
        allowed,
        parse_aliyun_sms_report,
        ALIYUN_ACK,
        ALIYUN_RETRY,
    )


def tencent_route(secret: str, allowed: tuple[IpNetwork, ...] = ()) -> PlatformRoute:
    """Tencent Cloud SMS status callbacks."""
    return PlatformRoute(
        PROVIDER_TENCENT,
        "sms-status",
        secret,
        allowed,
        parse_tencent_sms_status,
        TENCENT_ACK,
        TENCENT_RETRY,
    )


def _source_allowed(route: PlatformRoute, remote: str | None) -> bool:
    if not route.allowed_sources:
        return True
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in network for network in route.allowed_sources)


def _secret_matches(route: PlatformRoute, request: web.Request) -> bool:
    given = request.match_info.get("secret") or request.headers.get(SECRET_HEADER) or ""
    # A header that is not UTF-8 arrives with surrogates: compare its bytes, never fail.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), route.secret.encode())


class _WithoutRequestText(logging.Filter):
    """Strips what aiohttp's server log would echo of a bad request (its line holds the path).

    aiohttp logs a request it cannot parse with the offending bytes, and our paths
    carry the platforms' secrets: such records keep their message type and lose
    their arguments and traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"aiohttp could not serve a request ({record.levelname.lower()})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


_SERVER_LOG = logging.getLogger("aiohttp.server")
_SERVER_LOG.addFilter(_WithoutRequestText())


class CallbackApp:
    """The aiohttp application: health, then one group of routes per platform."""

    def __init__(
        self,
        receipts: DeliveryReceipts,
        routes: tuple[PlatformRoute, ...],
        *,
        max_body_bytes: int,
        metrics: CallbackMetrics | None = None,
        public_keys: PublicKeys | None = None,
    ) -> None:
        """`public_keys` (the key ring's, read per request) turns on the JWKS route."""
        self._public_keys = public_keys
        self._receipts = receipts
        self._routes = routes
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        self.serving = True

    def build(self) -> web.Application:
        """The application with every route; more route groups are added here."""
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_get(HEALTH_PATH, self._health)
        if self._public_keys is not None:
            app.router.add_get(JWKS_PATH, jwks_handler(self._public_keys, self._count_jwks))
        for route in self._routes:
            if not route.secret:
                continue
            handler = self._receipt_handler(route)
            app.router.add_post(f"/callbacks/{route.provider}/{{secret}}/{route.kind}", handler)
            app.router.add_post(f"/callbacks/{route.provider}/{route.kind}", handler)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        if self.serving:
            return web.json_response({"status": "SERVING"})
        return web.json_response({"status": "NOT_SERVING"}, status=503)

    def _count_jwks(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.callback_request("jwks", outcome)

    def _count(self, route: PlatformRoute, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.callback_request(route.name, outcome)

    def _receipt_handler(self, route: PlatformRoute) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            if not _source_allowed(route, request.remote):
                self._count(route, "source_refused")
                raise web.HTTPNotFound()
            if not _secret_matches(route, request):
                self._count(route, "secret_refused")
                raise web.HTTPNotFound()
            length = request.content_length
            if length is not None and length > self._max_body_bytes:
                self._count(route, "too_large")
                raise web.HTTPRequestEntityTooLarge(
                    max_size=self._max_body_bytes, actual_size=length
                )
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                self._count(route, "too_large")
                raise
            return await self._ingest(route, body)

        return handle

    async def _ingest(self, route: PlatformRoute, body: bytes) -> web.Response:
        """Parse, record and acknowledge one push (see the module docstring for the answers)."""
        try:
            doc = json.loads(body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self._count(route, "invalid_json")
            if self._metrics is not None:
                self._metrics.receipt_ignored(route.provider, "invalid_json")
            return web.json_response(route.ack)
        parsed = route.parse(doc)
        if self._metrics is not None:
            self._metrics.receipt_ignored(route.provider, "malformed", parsed.malformed)
        try:
            await self._receipts.record(parsed.receipts, source=route.provider)
        except Unavailable:
            self._count(route, "unavailable")
            return web.json_response(route.retry, status=503)
        except Exception as exc:
            self._count(route, "error")
            log.error("recording %s receipts failed: %s", route.provider, type(exc).__name__)
            return web.json_response(route.retry, status=500)
        self._count(route, "ok")
        return web.json_response(route.ack)


@dataclass
class RunningCallbacks:
    """A started listener and its port; `stop` ends it."""

    app: CallbackApp
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        """Answer health checks with 503, then close (in-flight requests finish first)."""
        self.app.serving = False
        await self.runner.cleanup()


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start_callbacks(
    app: CallbackApp,
    listen: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 5.0,
) -> RunningCallbacks:
    """Bind `listen` (host:port; port 0 picks one) with SO_REUSEPORT and start serving."""
    # access_log=None: the access log would write each path, and paths carry secrets.
    runner = web.AppRunner(app.build(), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    host, port = _split(listen)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("callback listener serving", extra={"port": bound})
    return RunningCallbacks(app, runner, int(bound))


__all__ = [
    "ALIYUN_ACK",
    "HEALTH_PATH",
    "SECRET_HEADER",
    "TENCENT_ACK",
    "CallbackApp",
    "PlatformRoute",
    "RunningCallbacks",
    "aliyun_route",
    "parse_networks",
    "start_callbacks",
    "tencent_route",
]
