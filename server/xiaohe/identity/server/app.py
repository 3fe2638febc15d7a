"""The gRPC server of one worker process: servicers, interceptor, health, reflection."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.storage.health import StoreCheck
from xiaohe.identity.server.transport.accounts import AccountServicer
from xiaohe.identity.server.transport.admin import AdminServicer
from xiaohe.identity.server.transport.auth import AuthServicer
from xiaohe.identity.server.transport.callbacks import (
    CallbackApp,
    RunningCallbacks,
    aliyun_route,
    parse_networks,
    start_callbacks,
    tencent_route,
)
from xiaohe.identity.server.transport.carriers import CarrierHookServicer
from xiaohe.identity.server.transport.codes import CodeServicer
from xiaohe.identity.server.transport.directory import DirectoryServicer
from xiaohe.identity.server.transport.health import HealthReporter
from xiaohe.identity.server.transport.interceptors import IdentityInterceptor
from xiaohe.identity.server.transport.privacy import PrivacyServicer
from xiaohe.identity.server.transport.realname import RealNameServicer
from xiaohe.identity.server.transport.recovery import RecoveryServicer
from xiaohe.identity.server.transport.reflection import enable_reflection
from xiaohe.identity.server.transport.review import ReviewServicer
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    carriers_pb2,
    carriers_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    directory_pb2,
    directory_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    realname_pb2,
    realname_pb2_grpc,
    recovery_pb2,
    recovery_pb2_grpc,
    review_pb2,
    review_pb2_grpc,
)

log = logging.getLogger("xiaohe.identity.app")

STORE_CHECK_TIMEOUT_SECONDS = 2.0
"""How long one health check waits for a store's answer before calling it down."""

SERVICE_NAMES = (
    codes_pb2.DESCRIPTOR.services_by_name["CodeService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    accounts_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
    recovery_pb2.DESCRIPTOR.services_by_name["RecoveryService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    carriers_pb2.DESCRIPTOR.services_by_name["CarrierHookService"].full_name,
    review_pb2.DESCRIPTOR.services_by_name["ReviewService"].full_name,
    realname_pb2.DESCRIPTOR.services_by_name["RealNameService"].full_name,
    directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name,
)


@dataclass
class RunningServer:
    """A started server and the port it listens on."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    reporter: HealthReporter
    """Sets `health` (and the callbacks' `/healthz`) from the stores' checks."""
    callbacks: RunningCallbacks | None = None
    """The HTTP callback listener, when `callback_listen` is set."""

    @property
    def callback_port(self) -> int:
        """The HTTP callback listener's port (0 when it is off)."""
        return self.callbacks.port if self.callbacks is not None else 0

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, then let in-flight RPCs (and callbacks) finish within grace."""
        await self.reporter.stop()
        if self.callbacks is not None:
            await self.callbacks.stop()
        await self.server.stop(grace)


def _add_port(server: grpc.aio.Server, listen: str, settings: Settings) -> int:
    """Listen in plaintext, or with TLS (mutual when a client CA is configured)."""
    if not settings.tls_cert_file:
        return server.add_insecure_port(listen)
    key = Path(settings.tls_key_file).read_bytes()
    chain = Path(settings.tls_cert_file).read_bytes()
    client_ca = (
        Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    )
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    return server.add_secure_port(listen, credentials)


async def start_server(container: Container, listen: str) -> RunningServer:
    """Build, bind and start the server; `listen` may use port 0 (tests)."""
    server = grpc.aio.server(
        interceptors=[IdentityInterceptor(container.clients, container.metrics)],
        options=[
            ("grpc.so_reuseport", 1),
            # Requests are a few hundred bytes: grpc refuses a larger one (RESOURCE_EXHAUSTED)
            # before any handler sees it. Responses are not capped: a policy text or
            # a client list may legitimately grow past a request-sized bound.
            ("grpc.max_receive_message_length", container.settings.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    codes_pb2_grpc.add_CodeServiceServicer_to_server(CodeServicer(container.codes), server)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(
            container.login,
            container.sessions,
            container.keyring.public_keys,
            container.settings.default_audience,
        ),
        server,
    )
    accounts_pb2_grpc.add_AccountServiceServicer_to_server(
        AccountServicer(
            registration=container.registration,
            passwords=container.passwords,
            channels=container.channels,
            phone_change=container.phone_change,
            accounts=container.accounts,
            sessions=container.sessions,
            totp=container.totp_flow,
            deactivation=container.deactivation,  # issue 14: deactivation
        ),
        server,
    )
    privacy_pb2_grpc.add_PrivacyServiceServicer_to_server(
        PrivacyServicer(
            container.policies,
            container.consent,
            container.sessions,
            container.directory,
            rights=container.rights_requests,  # issue 14: rights requests
            export=container.export,  # issue 14: export
        ),
        server,
    )
    directory_pb2_grpc.add_DirectoryServiceServicer_to_server(
        DirectoryServicer(container.directory, container.revocation_feed), server
    )
    recovery_pb2_grpc.add_RecoveryServiceServicer_to_server(
        RecoveryServicer(container.recovery), server
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(
            container.clients,
            container.audit,
            deliveries=container.delivery_log,
            prefix_watch=container.prefix_watch,
            rights=container.rights_requests,  # issue 14: rights requests
        ),
        server,
    )
    carriers_pb2_grpc.add_CarrierHookServiceServicer_to_server(
        CarrierHookServicer(container.receipts, container.recycled_numbers), server
    )
    review_pb2_grpc.add_ReviewServiceServicer_to_server(
        ReviewServicer(container.review, container.sessions), server
    )
    realname_pb2_grpc.add_RealNameServiceServicer_to_server(
        RealNameServicer(container.realname, container.sessions), server
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reporter = HealthReporter(
        health_servicer,
        SERVICE_NAMES,
        StoreCheck(
            container.database,
            container.redis,
            container.redis_url,
            timeout=STORE_CHECK_TIMEOUT_SECONDS,
        ).problems,
        container.settings.health_check_seconds,
    )
    # NOT_SERVING (not grpc's default SERVING) from the moment the port opens.
    await reporter.not_serving()
    enable_reflection(
        server, (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    )
    port = _add_port(server, listen, container.settings)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await container.policies.ensure_seeded()
    await container.start_background()
    await server.start()
    try:
        callbacks = await _start_callbacks(container)
    except BaseException:
        await server.stop(0)
        raise
    if callbacks is not None:
        app = callbacks.app  # `/healthz` answers what gRPC health answers (NOT_SERVING now)
        reporter.on_change(lambda serving: setattr(app, "serving", serving))
    await reporter.check()
    reporter.start()
    return RunningServer(server, port, health_servicer, reporter, callbacks)


async def _start_callbacks(container: Container) -> RunningCallbacks | None:
    """The HTTP callback listener of this worker, when `callback_listen` is set."""
    s = container.settings
    if not s.callback_listen:
        return None
    routes = (
        aliyun_route(s.callback_aliyun_secret, parse_networks(s.callback_aliyun_allowed_cidrs)),
        tencent_route(s.callback_tencent_secret, parse_networks(s.callback_tencent_allowed_cidrs)),
    )
    app = CallbackApp(
        container.receipts,
        routes,
        max_body_bytes=s.callback_max_body_bytes,
        metrics=container.metrics,
        public_keys=container.keyring.public_keys,
    )
    context = None
    if s.tls_cert_file:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
    return await start_callbacks(
        app, s.callback_listen, ssl_context=context, shutdown_timeout=s.shutdown_grace_seconds
    )
