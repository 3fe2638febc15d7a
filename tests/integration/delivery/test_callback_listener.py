"""The HTTP callback listener of a real server: platforms' pushes, secrets, caps, allowlists.

SECURITY X1: callbacks change state only with the provider's secret (and from its
listed addresses); bodies are size-capped; replays and duplicates change nothing.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.contract.faults import failing_writes
from tests.integration.conftest import Harness, HarnessFactory, wait_for_outbox
from tests.receipt_pushes import aliyun_push, tencent_push
from xiaohe.identity.server.transport.callbacks import SECRET_HEADER
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

ALIYUN_SECRET = "aliyun-secret-0123456789abcdef"
TENCENT_SECRET = "tencent-secret-0123456789abcdef"
PHONE = "+8613812345678"
ALIYUN_ACK = {"code": 0, "msg": "接收成功"}
TENCENT_ACK = {"result": 0, "errmsg": "OK"}


async def listener(factory: HarnessFactory, **overrides: object) -> Harness:
    settings: dict[str, object] = {
        "callback_listen": "127.0.0.1:0",
        "callback_aliyun_secret": ALIYUN_SECRET,
        "callback_tencent_secret": TENCENT_SECRET,
    }
    settings.update(overrides)
    return await factory(**settings)


def url(h: Harness, path: str) -> str:
    return f"http://127.0.0.1:{h.running.callback_port}{path}"


async def sent_code(h: Harness, phone: str = PHONE) -> str:
    """Issue a REGISTER code through the file provider; the message id of its outbox row."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    before = len(h.outbox_lines())
    await stub.IssueCode(
        codes_pb2.IssueCodeRequest(
            channel=common_pb2.CHANNEL_SMS, destination=phone, purpose=common_pb2.PURPOSE_REGISTER
        ),
        metadata=h.metadata,
    )
    lines = await wait_for_outbox(h, before + 1)
    return lines[-1]["message_id"]


async def post(
    session: aiohttp.ClientSession, target: str, body: str | bytes, **headers: str
) -> tuple[int, str]:
    async with session.post(
        target, data=body, headers={"Content-Type": "application/json", **headers}
    ) as response:
        return response.status, await response.text()


async def test_aliyun_and_tencent_pushes_are_recorded_once(harness_factory: HarnessFactory) -> None:
    """A push in each platform's format marks the row delivered; three repeats change nothing."""
    h = await listener(harness_factory)
    aliyun_id, tencent_id = await sent_code(h), await sent_code(h, "+8613912345678")
    aliyun_url = url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report")
    tencent_url = url(h, f"/callbacks/tencent/{TENCENT_SECRET}/sms-status")
    async with aiohttp.ClientSession() as session:
        for attempt in range(3):
            status, text = await post(session, aliyun_url, aliyun_push(aliyun_id))
            assert (status, json.loads(text)) == (200, ALIYUN_ACK)
            status, text = await post(session, tencent_url, tencent_push(tencent_id))
            assert (status, json.loads(text)) == (200, TENCENT_ACK)
            if attempt == 0:
                first = await h.container.delivery_log.get(aliyun_id)
            h.clock.advance(60)
    aliyun = await h.container.delivery_log.get(aliyun_id)
    tencent = await h.container.delivery_log.get(tencent_id)
    assert (aliyun.delivery, aliyun.detail) == ("delivered", "DELIVERED")
    assert (tencent.delivery, tencent.detail) == ("delivered", "DELIVRD")
    assert aliyun.reported_at == first.reported_at
    metrics = h.container.metrics.render().decode()
    assert 'reason="duplicate",source="aliyun"} 2.0' in metrics
    assert 'reason="duplicate",source="tencent"} 2.0' in metrics


async def test_the_secret_may_come_in_a_header(harness_factory: HarnessFactory) -> None:
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    async with aiohttp.ClientSession() as session:
        status, _ = await post(
            session,
            url(h, "/callbacks/aliyun/sms-report"),
            aliyun_push(message_id, success=False, err_code="MK:0001"),
            **{SECRET_HEADER: ALIYUN_SECRET},
        )
    assert status == 200
    record = await h.container.delivery_log.get(message_id)
    assert (record.delivery, record.detail) == ("failed", "MK:0001")


@pytest.mark.parametrize(
    "path_and_header",
    [
        ("/callbacks/aliyun/wrong-secret-0123456789abcdef/sms-report", {}),
        (f"/callbacks/tencent/{ALIYUN_SECRET}/sms-report", {}),  # a secret of another route
        (f"/callbacks/aliyun/{TENCENT_SECRET}/sms-report", {}),  # another provider's secret
        ("/callbacks/aliyun/sms-report", {}),
        ("/callbacks/aliyun/sms-report", {SECRET_HEADER: "wrong"}),
        (f"/callbacks/aliyun/{ALIYUN_SECRET[:-1]}/sms-report", {}),
    ],
)
async def test_a_wrong_secret_is_not_found_and_changes_nothing(
    harness_factory: HarnessFactory, path_and_header: tuple[str, dict[str, str]]
) -> None:
    """X1: 404, exactly as for a path that does not exist; the row keeps no receipt."""
    path, headers = path_and_header
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    async with aiohttp.ClientSession() as session:
        status, text = await post(session, url(h, path), aliyun_push(message_id), **headers)
        missing_status, missing_text = await post(session, url(h, "/no/such/path"), "[]")
    assert (status, text) == (missing_status, missing_text) == (404, "404: Not Found")
    assert (await h.container.delivery_log.get(message_id)).delivery == ""


async def test_a_platform_without_a_secret_has_no_routes(harness_factory: HarnessFactory) -> None:
    h = await listener(harness_factory, callback_tencent_secret="")
    async with aiohttp.ClientSession() as session:
        status, _ = await post(session, url(h, "/callbacks/tencent//sms-status"), "[]")
        header_status, _ = await post(
            session, url(h, "/callbacks/tencent/sms-status"), "[]", **{SECRET_HEADER: ""}
        )
    assert status == header_status == 404


async def test_ten_megabytes_are_refused_and_the_listener_keeps_serving(
    harness_factory: HarnessFactory,
) -> None:
    """X1: a 10 MB body gets 413; the next push is recorded."""
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    target = url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report")
    big = b"[" + b" " * (10 * 1024 * 1024) + b"]"
    async with aiohttp.ClientSession() as session:
        status, _ = await post(session, target, big)
        assert status == 413

        async def chunks():  # no Content-Length: the cap must hold while reading
            for _ in range(10):
                yield b" " * (1024 * 1024)

        async with session.post(target, data=chunks()) as response:
            assert response.status == 413
        status, text = await post(session, target, aliyun_push(message_id))
        assert (status, json.loads(text)) == (200, ALIYUN_ACK)
        async with session.get(url(h, "/healthz")) as response:
            assert (response.status, await response.json()) == (200, {"status": "SERVING"})
    assert (await h.container.delivery_log.get(message_id)).delivery == "delivered"
    assert 'outcome="too_large",route="aliyun.sms-report"} 2.0' in (
        h.container.metrics.render().decode()
    )


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[" * 100_000, b""])
async def test_invalid_json_is_acknowledged_and_counted(
    harness_factory: HarnessFactory, body: bytes
) -> None:
    """A retry of the same bytes cannot help, so the platform gets its ack; the metric counts it."""
    h = await listener(harness_factory)
    async with aiohttp.ClientSession() as session:
        status, text = await post(
            session, url(h, f"/callbacks/tencent/{TENCENT_SECRET}/sms-status"), body
        )
    assert (status, json.loads(text)) == (200, TENCENT_ACK)
    metrics = h.container.metrics.render().decode()
    assert 'outcome="invalid_json",route="tencent.sms-status"} 1.0' in metrics


async def test_unknown_ids_and_malformed_items_are_acknowledged_and_counted(
    harness_factory: HarnessFactory,
) -> None:
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    items = json.loads(aliyun_push(message_id))
    items += json.loads(aliyun_push("f" * 32, biz_id="123"))  # nobody's
    items += [{"success": "yes"}, 17]
    async with aiohttp.ClientSession() as session:
        status, text = await post(
            session, url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report"), json.dumps(items)
        )
    assert (status, json.loads(text)) == (200, ALIYUN_ACK)
    assert (await h.container.delivery_log.get(message_id)).delivery == "delivered"
    metrics = h.container.metrics.render().decode()
    assert 'reason="unknown_message",source="aliyun"} 1.0' in metrics
    assert 'reason="malformed",source="aliyun"} 2.0' in metrics


async def test_sources_outside_the_allowlist_are_not_found(harness_factory: HarnessFactory) -> None:
    """X1: with an allowlist, only listed networks reach the handler (here: not loopback)."""
    h = await listener(
        harness_factory,
        callback_aliyun_allowed_cidrs=("203.0.113.0/24",),
        callback_tencent_allowed_cidrs=("127.0.0.0/8",),
    )
    message_id = await sent_code(h)
    async with aiohttp.ClientSession() as session:
        refused, _ = await post(
            session,
            url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report"),
            aliyun_push(message_id),
        )
        accepted, _ = await post(
            session,
            url(h, f"/callbacks/tencent/{TENCENT_SECRET}/sms-status"),
            tencent_push(message_id),
        )
    assert (refused, accepted) == (404, 200)
    record = await h.container.delivery_log.get(message_id)
    assert (record.delivery, record.detail) == ("delivered", "DELIVRD")


async def test_a_failed_write_asks_the_platform_to_retry(harness_factory: HarnessFactory) -> None:
    """Our own failure is the one answer that is not an ack: 503, so the push comes again."""
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    target = url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report")
    async with aiohttp.ClientSession() as session:
        async with failing_writes(h.container.database, "outbox", "UPDATE"):
            status, text = await post(session, target, aliyun_push(message_id))
        assert (status, json.loads(text)) == (503, {"code": 1, "msg": "稍后重试"})
        assert (await h.container.delivery_log.get(message_id)).delivery == ""
        status, _ = await post(session, target, aliyun_push(message_id))
    assert status == 200
    assert (await h.container.delivery_log.get(message_id)).delivery == "delivered"


async def test_health_and_log_hold_no_secret_or_number(
    harness_factory: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    async with aiohttp.ClientSession() as session:
        async with session.get(url(h, "/healthz")) as response:
            assert response.status == 200
        await post(
            session,
            url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report"),
            aliyun_push(message_id, phone="13811112222"),
        )
    assert ALIYUN_SECRET not in caplog.text
    assert "13811112222" not in caplog.text
    assert ALIYUN_SECRET not in repr(h.container.settings)


async def test_a_receipt_with_an_impossible_time_is_acknowledged_without_its_time(
    harness_factory: HarnessFactory,
) -> None:
    """A year-1 report time must not make the push fail forever (the platform retries 5xx)."""
    h = await listener(harness_factory)
    message_id = await sent_code(h)
    push = aliyun_push(message_id, report_time="0001-01-01 00:00:00")
    async with aiohttp.ClientSession() as session:
        status, text = await post(
            session, url(h, f"/callbacks/aliyun/{ALIYUN_SECRET}/sms-report"), push
        )
    assert (status, json.loads(text)) == (200, ALIYUN_ACK)
    shown = await h.container.delivery_log.get(message_id)
    assert (shown.delivery, shown.done_at) == ("delivered", None)


async def test_a_secret_header_that_is_not_utf8_is_not_found(
    harness_factory: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a 500 with a traceback per request: the same 404 as any wrong secret."""
    h = await listener(harness_factory)
    port = h.running.callback_port
    request = (
        b"POST /callbacks/aliyun/sms-report HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + SECRET_HEADER.encode()
        + b": \xff\xfe\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"
    )
    reply = await raw_exchange(port, request)
    assert reply.split(b"\r\n", 1)[0].endswith(b" 404 Not Found")
    assert "Traceback" not in caplog.text


async def test_a_request_aiohttp_cannot_parse_leaves_no_secret_in_the_log(
    harness_factory: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    h = await listener(harness_factory)
    request = f"POST /callbacks/aliyun/{ALIYUN_SECRET}/\x01bad HTTP/1.1\r\n\r\n".encode()
    reply = await raw_exchange(h.running.callback_port, request)
    assert reply.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert ALIYUN_SECRET not in caplog.text


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes to the listener (no client library tidies them up); its first reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
