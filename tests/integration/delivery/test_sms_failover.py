"""Failover between the SMS platforms, the circuit breaker, and the unknown-outcome policy.

The platforms are the local fakes (signatures checked); the outbox is a real
database (SQLite, and PostgreSQL when configured); time is a fake clock.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.fakes._server import LocalServer
from tests.fakes.aliyun_sms import AliyunSmsFake
from tests.fakes.tencent_sms import TencentSmsFake
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.delivery.aliyun import AliyunSmsConfig, AliyunSmsProvider
from xiaohe.identity.server.delivery.dispatcher import Dispatcher
from xiaohe.identity.server.delivery.failover import CLOSED, HALF_OPEN, OPEN, FailoverProvider
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.delivery.platforms import PlatformTemplates
from xiaohe.identity.server.delivery.providers import (
    DeliveryError,
    DeliveryOutcomeUnknown,
    HttpSmsGatewayProvider,
    OutgoingMessage,
)
from xiaohe.identity.server.delivery.templates import render_code_message
from xiaohe.identity.server.delivery.tencent import TencentSmsConfig, TencentSmsProvider
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.schema import outbox as outbox_table

PHONE = "+8613700002222"
CODE = "482913"
TEXT = render_code_message("SMS", "LOGIN", CODE, 300)
COOLDOWN = 30.0


def message(message_id: str = "m1", purpose: str = "LOGIN") -> OutgoingMessage:
    text = render_code_message("SMS", purpose, CODE, 300)
    return OutgoingMessage(message_id, "SMS", PHONE, purpose, text, template_params={"code": CODE})


class RecordingMetrics:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, str]] = []
        self.states: list[tuple[str, str]] = []
        self.deliveries: list[tuple[str, str]] = []

    def provider_attempt(self, provider: str, outcome: str) -> None:
        self.attempts.append((provider, outcome))

    def breaker_state(self, provider: str, state: str) -> None:
        self.states.append((provider, state))

    def delivery(self, provider: str, outcome: str) -> None:
        self.deliveries.append((provider, outcome))


class AesGcmTestSealer:
    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[AliyunSmsFake, TencentSmsFake, str, str]]:
    aliyun_fake, tencent_fake = AliyunSmsFake("ak", "ak-secret"), TencentSmsFake("sid", "skey")
    a_url, t_url = await aliyun_fake.start(), await tencent_fake.start()
    yield aliyun_fake, tencent_fake, a_url, t_url
    await aliyun_fake.close()
    await tencent_fake.close()


def chain(
    urls: tuple[str, str], clock: FakeClock, metrics: RecordingMetrics, timeout: float = 5.0
) -> FailoverProvider:
    templates = PlatformTemplates("小禾企服网", {"LOGIN": "SMS_1", "NOTICE": "SMS_9"})
    aliyun = AliyunSmsProvider(
        AliyunSmsConfig("ak", "ak-secret", templates, endpoint=urls[0], read_timeout=timeout)
    )
    tencent = TencentSmsProvider(
        TencentSmsConfig(
            "sid",
            "skey",
            "1400000001",
            PlatformTemplates("小禾企服网", {"LOGIN": "1"}),
            endpoint=urls[1],
            timeout=timeout,
        )
    )
    return FailoverProvider(
        [aliyun, tencent], clock, failure_threshold=2, cooldown_seconds=COOLDOWN, metrics=metrics
    )


async def row(database: Database, message_id: str) -> Any:
    async with database.connect() as conn:
        query = sa.select(outbox_table).where(outbox_table.c.message_id == message_id)
        return (await conn.execute(query)).one()


async def test_failover_when_the_first_answers_5xx(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.scenario = "server_error"
    metrics = RecordingMetrics()
    accepted = await chain((a_url, t_url), clock, metrics).send(message("m-fo-1"))
    assert [s.out_id for s in aliyun_fake.received] == ["m-fo-1"]
    assert aliyun_fake.accepted == []
    assert [s.session_context for s in tencent_fake.accepted] == ["m-fo-1"]
    assert (accepted.provider, accepted.provider_message_id) == (
        "tencent",
        tencent_fake.accepted[0].serial_no,
    )
    assert metrics.attempts == [("aliyun", "failed"), ("tencent", "accepted")]


async def test_no_failover_and_no_second_send_when_the_first_timed_out_after_accepting(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.scenario = "hang"
    with pytest.raises(DeliveryOutcomeUnknown) as info:
        await chain((a_url, t_url), clock, RecordingMetrics(), timeout=0.3).send(message())
    assert info.value.provider == "aliyun"
    assert len(aliyun_fake.accepted) == 1
    assert tencent_fake.received == []


async def test_a_permanent_refusal_does_not_fail_over(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.scenario = "invalid_template"
    metrics = RecordingMetrics()
    provider = chain((a_url, t_url), clock, metrics)
    with pytest.raises(DeliveryError) as info:
        await provider.send(message())
    assert not info.value.retryable
    assert info.value.provider == "aliyun"
    assert tencent_fake.received == []
    assert metrics.attempts == [("aliyun", "rejected")]
    assert provider.breakers["aliyun"].state == CLOSED


async def test_a_purpose_the_first_does_not_serve_goes_to_the_next(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    provider = chain((a_url, t_url), clock, RecordingMetrics())
    with pytest.raises(DeliveryError) as info:
        await provider.send(message(purpose="RESET_PASSWORD"))  # neither serves it
    assert (info.value.retryable, aliyun_fake.received, tencent_fake.received) == (False, [], [])


async def test_the_circuit_opens_skips_then_probes_and_closes(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, _tencent_fake, a_url, t_url = fakes
    metrics = RecordingMetrics()
    provider = chain((a_url, t_url), clock, metrics)
    breaker = provider.breakers["aliyun"]
    aliyun_fake.scenario = "server_error"
    for n in range(2):
        assert (await provider.send(message(f"m{n}"))).provider == "tencent"
    assert breaker.state == OPEN
    assert len(aliyun_fake.received) == 2

    # Open: aliyun is not even called, even though it would now succeed.
    aliyun_fake.scenario = "ok"
    assert (await provider.send(message("m2"))).provider == "tencent"
    assert len(aliyun_fake.received) == 2
    assert ("aliyun", "skipped") in metrics.attempts

    clock.advance(COOLDOWN - 1)
    assert breaker.state == OPEN
    clock.advance(1)
    assert breaker.state == HALF_OPEN
    assert (await provider.send(message("m3"))).provider == "aliyun"  # the probe
    assert breaker.state == CLOSED
    assert [s.out_id for s in aliyun_fake.accepted] == ["m3"]
    assert metrics.states == [("aliyun", OPEN), ("aliyun", HALF_OPEN), ("aliyun", CLOSED)]


async def test_a_failed_probe_opens_the_circuit_for_another_cooldown(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, _, a_url, t_url = fakes
    provider = chain((a_url, t_url), clock, RecordingMetrics())
    breaker = provider.breakers["aliyun"]
    aliyun_fake.scenario = "server_error"
    await provider.send(message("m0"))
    await provider.send(message("m1"))
    clock.advance(COOLDOWN)
    await provider.send(message("m2"))  # probe fails, tencent takes it
    assert breaker.state == OPEN
    assert len(aliyun_fake.received) == 3
    clock.advance(COOLDOWN - 1)
    await provider.send(message("m3"))
    assert len(aliyun_fake.received) == 3


async def test_when_every_circuit_is_open_the_message_waits(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.scenario = tencent_fake.scenario = "server_error"
    provider = chain((a_url, t_url), clock, RecordingMetrics())
    for n in range(2):
        with pytest.raises(DeliveryError):
            await provider.send(message(f"m{n}"))
    with pytest.raises(DeliveryError) as info:
        await provider.send(message("m2"))
    assert info.value.retryable
    assert info.value.reason == "all providers skipped (circuit open)"
    assert (len(aliyun_fake.received), len(tencent_fake.received)) == (2, 2)


# -- through the dispatcher -------------------------------------------------------------


async def test_dispatcher_records_the_provider_that_took_it_and_its_id(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock, database: Database
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.scenario = "server_error"
    sealer = AesGcmTestSealer()
    metrics = RecordingMetrics()
    provider = chain((a_url, t_url), clock, metrics)
    dispatcher = Dispatcher(database, sealer, {"SMS": provider}, clock, metrics=metrics)
    outbox = Outbox(database, sealer, clock)
    message_id = await outbox.enqueue("SMS", PHONE, "LOGIN", TEXT, params={"code": CODE})
    assert await dispatcher.run_once() == 1
    sent = await row(database, message_id)
    assert (sent.status, sent.provider) == ("sent", "tencent")
    assert sent.provider_message_id == tencent_fake.accepted[0].serial_no
    assert sent.provider_message_id is not None
    assert sent.payload_enc is None
    assert tencent_fake.accepted[0].template_params == [CODE]
    assert tencent_fake.accepted[0].session_context == message_id
    assert metrics.deliveries == [("tencent", "sent")]


async def test_dispatcher_assumes_sent_after_an_unknown_outcome_and_never_resends(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock, database: Database
) -> None:
    """The default policy: no double SMS; the row says who may have it and why there is no id."""
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.scenario = "hang"
    sealer = AesGcmTestSealer()
    metrics = RecordingMetrics()
    provider = chain((a_url, t_url), clock, metrics, timeout=0.3)
    dispatcher = Dispatcher(database, sealer, {"SMS": provider}, clock, metrics=metrics)
    message_id = await Outbox(database, sealer, clock).enqueue("SMS", PHONE, "LOGIN", TEXT)
    await dispatcher.run_once()
    for _ in range(3):
        clock.advance(120)
        assert await dispatcher.run_once() == 0
    done = await row(database, message_id)
    assert (done.status, done.provider, done.provider_message_id) == ("sent", "aliyun", None)
    assert done.last_error == "outcome unknown"
    assert done.payload_enc is None
    assert [s.out_id for s in aliyun_fake.accepted] == [message_id]
    assert tencent_fake.received == []
    assert metrics.deliveries == [("aliyun", "unknown")]


async def test_dispatcher_retry_policy_sends_again_after_an_unknown_outcome(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock, database: Database
) -> None:
    aliyun_fake, tencent_fake, a_url, t_url = fakes
    aliyun_fake.script = ["hang"]
    sealer = AesGcmTestSealer()
    # The resend must be answered within the timeout too: 0.3 s was not always enough for
    # the platform SDK's call on a loaded two-core host, so the hang waits 2 s instead.
    provider = chain((a_url, t_url), clock, RecordingMetrics(), timeout=2.0)
    dispatcher = Dispatcher(
        database, sealer, {"SMS": provider}, clock, unknown_outcome="retry", random_source=lambda: 0
    )
    message_id = await Outbox(database, sealer, clock).enqueue("SMS", PHONE, "LOGIN", TEXT)
    await dispatcher.run_once()
    assert (await row(database, message_id)).status == "pending"
    clock.advance(10)
    await dispatcher.run_once()
    done = await row(database, message_id)
    assert (done.status, done.provider) == ("sent", "aliyun")
    assert done.provider_message_id == aliyun_fake.accepted[1].biz_id
    assert [s.out_id for s in aliyun_fake.accepted] == [message_id, message_id]
    assert tencent_fake.received == []


async def test_an_unknown_outcome_at_an_idempotent_gateway_is_not_retried_through_the_chain(
    fakes: tuple[AliyunSmsFake, TencentSmsFake, str, str], clock: FakeClock
) -> None:
    """The gateway dedupes by message id, Aliyun does not: once the gateway may have the
    message, a retry of the chain could reach Aliyun (the gateway's circuit open) and send
    a second SMS, so the chain's unknown outcome must not be retried."""
    aliyun_fake, _, a_url, _ = fakes

    async def hang(request: web.Request) -> web.StreamResponse:
        await gateway.release.wait()
        return web.Response(status=200)

    gateway = LocalServer(hang)
    gateway_url = await gateway.start()
    try:
        http = HttpSmsGatewayProvider(gateway_url, "k1", "gateway-secret", clock, timeout=0.3)
        templates = PlatformTemplates("小禾企服网", {"LOGIN": "SMS_1"})
        aliyun = AliyunSmsProvider(AliyunSmsConfig("ak", "ak-secret", templates, endpoint=a_url))
        provider = FailoverProvider([http, aliyun], clock, failure_threshold=1, cooldown_seconds=60)
        with pytest.raises(DeliveryOutcomeUnknown) as info:
            await provider.send(message())
        assert info.value.provider == "http"
        assert info.value.idempotent is False
        assert aliyun_fake.received == []
    finally:
        await gateway.close()
