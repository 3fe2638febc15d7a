"""The HTTP SMS gateway provider against a real local HTTP server that checks the signature."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.delivery.dispatcher import Dispatcher
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.delivery.providers import (
    DeliveryError,
    HttpSmsGatewayProvider,
    OutgoingMessage,
    gateway_signature,
    verify_gateway_signature,
)
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.schema import outbox as outbox_table

SECRET = "gateway-shared-secret"
PHONE = "+8613700001111"
CODE = "390127"
TEXT = f"【小禾企服网】您正在登录小禾企服网，验证码：{CODE}，5分钟内有效。请勿将验证码告知他人。"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class GatewayState:
    clock: FakeClock
    fail_next: int = 0
    fail_status: int = 503
    requests: list[Received] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class GatewayServer(ThreadingHTTPServer):
    def __init__(self, state: GatewayState) -> None:
        super().__init__(("127.0.0.1", 0), GatewayHandler)
        self.state = state


class GatewayHandler(BaseHTTPRequestHandler):
    server: GatewayServer

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = self.headers.get("X-Xiaohe-Key-Id") == "key-1" and verify_gateway_signature(
            SECRET,
            body,
            self.headers.get("X-Xiaohe-Timestamp", ""),
            self.headers.get("X-Xiaohe-Signature", ""),
            now=state.clock.now(),
        )
        with state.lock:
            if not ok:
                status = 401
            elif state.fail_next > 0:
                state.fail_next -= 1
                status = state.fail_status
            else:
                status = 200
                key = self.headers.get("Idempotency-Key", "")
                if key not in state.accepted:  # a real gateway dedupes by this key
                    state.accepted.append(key)
            state.requests.append(Received(dict(self.headers.items()), body, status))
        reply = b'{"ok":true}' if status == 200 else b'{"error":"nope"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return


@pytest.fixture
def gateway(clock: FakeClock) -> Iterator[tuple[GatewayState, str]]:
    state = GatewayState(clock=clock)
    server = GatewayServer(state)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/sms"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_provider(url: str, clock: FakeClock, secret: str = SECRET) -> HttpSmsGatewayProvider:
    return HttpSmsGatewayProvider(url, "key-1", secret, clock, timeout=5, proxies={})


def message(message_id: str = "a1b2c3") -> OutgoingMessage:
    return OutgoingMessage(
        message_id=message_id, channel="SMS", to=PHONE, purpose="LOGIN", text=TEXT
    )


async def test_posts_signed_json_with_idempotency_key(
    gateway: tuple[GatewayState, str], clock: FakeClock
) -> None:
    state, url = gateway
    await make_provider(url, clock).send(message("a1b2c3"))
    assert [r.status for r in state.requests] == [200]
    request = state.requests[0]
    assert request.headers["Idempotency-Key"] == "a1b2c3"
    assert request.headers["X-Xiaohe-Timestamp"] == str(int(clock.now()))
    assert request.headers["Content-Type"].startswith("application/json")
    assert json.loads(request.body) == {
        "message_id": "a1b2c3",
        "to": PHONE,
        "text": TEXT,
        "purpose": "LOGIN",
    }
    assert "验证码".encode() in request.body


async def test_wrong_secret_is_rejected_by_the_gateway_as_permanent(
    gateway: tuple[GatewayState, str], clock: FakeClock
) -> None:
    state, url = gateway
    with pytest.raises(DeliveryError) as info:
        await make_provider(url, clock, secret="wrong").send(message())
    assert (info.value.retryable, info.value.reason) == (False, "gateway http 401")
    assert state.accepted == []


@pytest.mark.parametrize(
    ("status", "retryable"), [(503, True), (500, True), (429, True), (400, False), (404, False)]
)
async def test_status_codes_map_to_retryable_or_permanent(
    gateway: tuple[GatewayState, str], clock: FakeClock, status: int, retryable: bool
) -> None:
    state, url = gateway
    state.fail_next, state.fail_status = 1, status
    with pytest.raises(DeliveryError) as info:
        await make_provider(url, clock).send(message())
    assert info.value.retryable is retryable
    assert info.value.reason == f"gateway http {status}"
    assert PHONE not in str(info.value)
    assert CODE not in str(info.value)


async def test_connection_refused_is_retryable(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(DeliveryError) as info:
        await make_provider(f"http://127.0.0.1:{closed}/sms", clock).send(message())
    assert info.value.retryable
    assert info.value.reason.startswith("gateway connection error")


def test_only_http_urls_are_accepted(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="https"):
        HttpSmsGatewayProvider("file:///etc/passwd", "k", SECRET, clock)


@pytest.mark.parametrize(
    "url", ["http://sms.example.net/send", "http://10.0.0.5/send", "http://0.0.0.0/send"]
)
def test_plain_http_is_refused_off_loopback(clock: FakeClock, url: str) -> None:
    """X2: the body carries a phone number and a code; plain HTTP only to this machine."""
    with pytest.raises(ValueError, match="https"):
        HttpSmsGatewayProvider(url, "k", SECRET, clock)
    assert HttpSmsGatewayProvider("https" + url[4:], "k", SECRET, clock) is not None


def test_verify_gateway_signature_rejects_tampering_and_stale_timestamps() -> None:
    body = json.dumps({"message_id": "m1", "to": PHONE, "text": TEXT, "purpose": "LOGIN"}).encode()
    ts = "1790000000"
    good = gateway_signature(SECRET, ts, "m1", body)
    assert len(good) == 64
    assert verify_gateway_signature(SECRET, body, ts, good, now=1_790_000_100)
    assert verify_gateway_signature(SECRET.encode(), body, ts, good.upper(), now=1_790_000_000)
    assert not verify_gateway_signature("other", body, ts, good, now=1_790_000_000)
    assert not verify_gateway_signature(
        SECRET, body.replace(b"LOGIN", b"LOGON"), ts, good, now=1_790_000_000
    )
    assert not verify_gateway_signature(SECRET, body, "1790000001", good, now=1_790_000_000)
    assert not verify_gateway_signature(SECRET, body, ts, good, now=1_790_000_301)  # too old
    assert not verify_gateway_signature(SECRET, body, ts, good, now=1_789_999_699)  # too new
    assert not verify_gateway_signature(SECRET, body, "-5", good, now=1_790_000_000)
    assert not verify_gateway_signature(SECRET, b"not json", ts, good, now=1_790_000_000)
    swapped = body.replace(b'"m1"', b'"m2"')
    assert not verify_gateway_signature(SECRET, swapped, ts, good, now=1_790_000_000)


class AesGcmTestSealer:
    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad)


async def test_dispatcher_retries_through_503s_and_delivers_once(
    gateway: tuple[GatewayState, str], clock: FakeClock, database: Database
) -> None:
    state, url = gateway
    state.fail_next = 2
    sealer = AesGcmTestSealer()
    dispatcher = Dispatcher(
        database,
        sealer,
        {"SMS": make_provider(url, clock)},
        clock,
        max_attempts=5,
        backoff_base=1.0,
        random_source=lambda: 0.0,
    )
    message_id = await Outbox(database, sealer, clock).enqueue("SMS", PHONE, "LOGIN", TEXT)
    for _ in range(5):
        await dispatcher.run_once()
        clock.advance(10)
    assert [r.status for r in state.requests] == [503, 503, 200]
    assert {r.headers["Idempotency-Key"] for r in state.requests} == {message_id}
    assert state.accepted == [message_id]
    async with database.connect() as conn:
        status, attempts, provider = (
            await conn.execute(
                sa.select(
                    outbox_table.c.status, outbox_table.c.attempts, outbox_table.c.provider
                ).where(outbox_table.c.message_id == message_id)
            )
        ).one()
    assert (status, attempts, provider) == ("sent", 3, "http")
