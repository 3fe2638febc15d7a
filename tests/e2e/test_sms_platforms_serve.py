"""`xiaohe-identity serve` sending through Aliyun and Tencent Cloud, receipts pushed back.

Acceptance of issue 10: a code goes out through the Aliyun-format test platform
(which checks the ACS3 signature), the platform pushes its receipt back in Aliyun's
exact format to the callback listener, and the message shows as delivered. With
Aliyun answering 5xx, the next code fails over to the Tencent-format platform (TC3
signature checked) and its receipt comes back in Tencent's format. Each receipt is
pushed three times; nothing changes after the first.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from tests.e2e.conftest import ServedProcess, free_port, start_serve
from tests.fakes.aliyun_sms import AliyunSmsFake
from tests.fakes.tencent_sms import TencentSmsFake
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")

ALIYUN_SECRET = "e2e-aliyun-callback-0123456789"
TENCENT_SECRET = "e2e-tencent-callback-0123456789"
ALIYUN_ACK = {"code": 0, "msg": "接收成功"}
TENCENT_ACK = {"result": 0, "errmsg": "OK"}


class LoopThread:
    """An event loop on a thread of its own, for the platform fakes beside a served process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture
def platforms() -> Iterator[tuple[LoopThread, AliyunSmsFake, str, TencentSmsFake, str]]:
    loop = LoopThread()
    aliyun = AliyunSmsFake("LTAI-e2e-key", "aliyun-e2e-secret")
    tencent = TencentSmsFake("AKID-e2e-key", "tencent-e2e-secret")
    aliyun_url = loop.run(aliyun.start())
    tencent_url = loop.run(tencent.start())
    yield loop, aliyun, aliyun_url, tencent, tencent_url
    loop.run(aliyun.close())
    loop.run(tencent.close())
    loop.stop()


def issue_register_code(served: ServedProcess, phone: str) -> None:
    served.issue_code(phone)


def get_delivery(served: ServedProcess, message_id: str) -> admin_pb2.Delivery:
    with grpc.insecure_channel(served.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.GetDeliveryRequest(message_id=message_id)
        return stub.GetDelivery(request, metadata=served.metadata, timeout=10).delivery


def wait_for(condition: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_codes_go_out_through_each_platform_and_their_receipts_come_back(
    tmp_path: Path, platforms: tuple[LoopThread, AliyunSmsFake, str, TencentSmsFake, str]
) -> None:
    loop, aliyun, aliyun_url, tencent, tencent_url = platforms
    callback_port = free_port()
    served = start_serve(
        tmp_path / "var",
        XIAOHE_IDENTITY_SMS_PROVIDERS="aliyun,tencent",
        XIAOHE_IDENTITY_ALIYUN_SMS_ACCESS_KEY_ID=aliyun.access_key_id,
        XIAOHE_IDENTITY_ALIYUN_SMS_ACCESS_KEY_SECRET=aliyun.access_key_secret,
        XIAOHE_IDENTITY_ALIYUN_SMS_ENDPOINT=aliyun_url,
        XIAOHE_IDENTITY_ALIYUN_SMS_SIGN_NAME="小禾企服网",
        XIAOHE_IDENTITY_ALIYUN_SMS_TEMPLATES="REGISTER=SMS_100001",
        XIAOHE_IDENTITY_TENCENT_SMS_SECRET_ID=tencent.secret_id,
        XIAOHE_IDENTITY_TENCENT_SMS_SECRET_KEY=tencent.secret_key,
        XIAOHE_IDENTITY_TENCENT_SMS_SDK_APP_ID="1400000001",
        XIAOHE_IDENTITY_TENCENT_SMS_ENDPOINT=tencent_url,
        XIAOHE_IDENTITY_TENCENT_SMS_SIGN_NAME="小禾企服网",
        XIAOHE_IDENTITY_TENCENT_SMS_TEMPLATES="REGISTER=100001",
        XIAOHE_IDENTITY_CALLBACK_LISTEN=f"127.0.0.1:{callback_port}",
        XIAOHE_IDENTITY_CALLBACK_ALIYUN_SECRET=ALIYUN_SECRET,
        XIAOHE_IDENTITY_CALLBACK_TENCENT_SECRET=TENCENT_SECRET,
    )
    base = f"http://127.0.0.1:{callback_port}/callbacks"
    try:
        # Aliyun takes the first code; its receipt comes back in Aliyun's format.
        issue_register_code(served, "+8613812340001")
        sent = wait_for(lambda: aliyun.accepted, "Aliyun to take the code")[0]
        assert sent.phone.endswith("13812340001")
        assert sent.template_code == "SMS_100001"
        assert sent.template_param["code"].isdigit()
        message_id = sent.out_id
        report = [aliyun.receipt(sent)]
        for _ in range(3):
            status, body = loop.run(
                aliyun.push_receipts(f"{base}/aliyun/{ALIYUN_SECRET}/sms-report", report)
            )
            assert (status, json.loads(body)) == (200, ALIYUN_ACK)
        shown = get_delivery(served, message_id)
        assert (shown.status, shown.provider, shown.delivery) == ("sent", "aliyun", "delivered")
        assert shown.provider_message_id == sent.biz_id

        # Aliyun fails (5xx): the next code fails over to Tencent; its receipt in its format.
        aliyun.scenario = "server_error"
        issue_register_code(served, "+8613812340002")
        taken = wait_for(lambda: tencent.accepted, "Tencent to take the failed-over code")[0]
        assert [s.scenario for s in aliyun.received] == ["ok", "server_error"]
        report = [tencent.receipt(taken)]
        for _ in range(3):
            status, body = loop.run(
                tencent.push_receipts(f"{base}/tencent/{TENCENT_SECRET}/sms-status", report)
            )
            assert (status, json.loads(body)) == (200, TENCENT_ACK)
        shown = get_delivery(served, taken.session_context)
        assert (shown.provider, shown.delivery, shown.detail) == ("tencent", "delivered", "DELIVRD")
        assert shown.provider_message_id == taken.serial_no
        assert aliyun.rejected == []  # every signature checked out
        assert tencent.rejected == []
    finally:
        assert served.stop() == 0
    log = served.log_text()
    for secret in (aliyun.access_key_secret, tencent.secret_key, ALIYUN_SECRET, TENCENT_SECRET):
        assert secret not in log
    assert "13812340001" not in log
