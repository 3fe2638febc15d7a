"""`xiaohe-identity health`: ask the running server's gRPC health service, for container probes.

A container health check needs no extra binary this way: the image already holds
the CLI. The probe connects to the address the server listens on (a wildcard host
becomes loopback), over TLS when the server has a certificate, and exits 0 only
for SERVING.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xiaohe.identity.server.config import Settings

HEALTHY: int = 0
UNHEALTHY: int = 1
"""Exit statuses as container runtimes read them (Docker reserves 2)."""

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}  # noqa: S104


@dataclass(frozen=True)
class ProbeTls:
    """How the probe authenticates the server and, for mTLS, itself (PEM file paths)."""

    ca_file: str = ""
    server_name: str = ""
    cert_file: str = ""
    key_file: str = ""


def local_target(listen: str) -> str:
    """The address to reach a server listening on `listen` from the same host."""
    host, _, port = listen.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def _channel(target: str, settings: Settings, tls: ProbeTls) -> grpc.Channel:
    """A plaintext channel, or a TLS one when the server listens with a certificate."""
    if not settings.tls_cert_file:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca_file).read_bytes() if tls.ca_file else None,
        private_key=Path(tls.key_file).read_bytes() if tls.key_file else None,
        certificate_chain=Path(tls.cert_file).read_bytes() if tls.cert_file else None,
    )
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def check(
    settings: Settings,
    *,
    target: str = "",
    service: str = "",
    timeout: float = 3.0,
    tls: ProbeTls | None = None,
) -> tuple[int, str]:
    """Ask the health service once; returns (exit status, one line saying what it answered)."""
    address = target or local_target(settings.listen)
    with _channel(address, settings, tls or ProbeTls()) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return UNHEALTHY, f"{address}: {code.name if code is not None else 'no answer'}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
    return (HEALTHY if healthy else UNHEALTHY), f"{address}: {status}"
