"""TLS and mutual TLS on the gRPC listener, with certificates made for the test."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import harness_settings
from xiaohe.identity.server.app import RunningServer, start_server
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.config import Settings, SettingsError, load_settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.probe import HEALTHY, UNHEALTHY, ProbeTls, check
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async


@dataclasses.dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: bytes
    client_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Test certificates."""
    ca_key = _key()
    ca = _cert("xiaohe test CA", ca_key, None, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("identity", server_key, ("xiaohe test CA", ca_key), ip="127.0.0.1")
    client = _cert("web-bff", client_key, ("xiaohe test CA", ca_key))
    paths = {name: tmp_path / name for name in ("ca.pem", "server.pem", "server.key")}
    paths["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server.pem"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["server.key"].write_bytes(_pem_key(server_key))
    return Pki(
        paths["ca.pem"],
        paths["server.pem"],
        paths["server.key"],
        client.public_bytes(serialization.Encoding.PEM),
        _pem_key(client_key),
    )


async def _serve(
    settings: Settings, redis_url: str, clock: FakeClock
) -> tuple[Container, RunningServer]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade_async(settings.effective_database_url)
    container = Container(settings, redis_url=redis_url, clock=clock)
    return container, await start_server(container, settings.listen)


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


@pytest.fixture
async def tls_server(
    tmp_path: Path, pki: Pki, embedded_redis: EmbeddedRedis, clock: FakeClock
) -> AsyncIterator[int]:
    """A server with mutual TLS; yields its port."""
    settings = dataclasses.replace(
        harness_settings(tmp_path / "var"),
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
    )
    container, running = await _serve(settings, embedded_redis.url + "?db=3", clock)
    yield running.port
    await running.stop(0)
    await container.close()


async def test_mutual_tls_admits_clients_with_a_certificate_only(tls_server: int, pki: Pki) -> None:
    """With a client CA, a client certificate is required; plaintext and anonymous TLS fail."""
    target = f"127.0.0.1:{tls_server}"
    trusted = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key,
        certificate_chain=pki.client_cert,
    )
    async with grpc.aio.secure_channel(target, trusted) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    for channel in (
        grpc.aio.secure_channel(target, anonymous),
        grpc.aio.insecure_channel(target),
    ):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _health(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_health_command_probes_a_mutual_tls_listener(
    tls_server: int, pki: Pki, tmp_path: Path
) -> None:
    """`xiaohe-identity health` trusts the given CA and presents its certificate under mTLS."""
    settings = dataclasses.replace(
        harness_settings(tmp_path / "probe"),
        listen=f"0.0.0.0:{tls_server}",  # the probe turns a wildcard host into loopback
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
    )
    cert, key = tmp_path / "probe.pem", tmp_path / "probe.key"
    cert.write_bytes(pki.client_cert)
    key.write_bytes(pki.client_key)
    with_cert = ProbeTls(ca_file=str(pki.ca), cert_file=str(cert), key_file=str(key))
    status, line = await asyncio.to_thread(check, settings, tls=with_cert)
    assert (status, line) == (HEALTHY, f"127.0.0.1:{tls_server}: SERVING")
    anonymous = ProbeTls(ca_file=str(pki.ca))
    status, line = await asyncio.to_thread(check, settings, tls=anonymous, timeout=2)
    assert status == UNHEALTHY
    assert "SERVING" not in line


def test_tls_settings_are_checked_at_start_up(tmp_path: Path, pki: Pki) -> None:
    """A certificate without its key, or an unreadable file, stops start-up with one line."""
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        load_settings({"XIAOHE_IDENTITY_TLS_CERT_FILE": str(pki.server_cert)})
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(
            {
                "XIAOHE_IDENTITY_TLS_CERT_FILE": str(pki.server_cert),
                "XIAOHE_IDENTITY_TLS_KEY_FILE": str(tmp_path / "missing.key"),
            }
        )
