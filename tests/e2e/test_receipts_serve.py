"""`xiaohe-identity serve` with the callback listener on: receipts pushed as the platforms do.

Acceptance of issue 10 §1: a code's receipt pushed in Aliyun's and in Tencent's exact
format shows as delivered (GetDelivery, `delivery show`); the same push three times
changes nothing more; an unknown id, 10 MB, invalid JSON and a wrong secret each get
the documented answer while the listener keeps serving.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from tests.e2e.conftest import CLI, ServedProcess, free_port, start_serve
from tests.receipt_pushes import aliyun_push, tencent_push
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc

ALIYUN_SECRET = "e2e-aliyun-secret-0123456789"
TENCENT_SECRET = "e2e-tencent-secret-0123456789"
ALIYUN_ACK = {"code": 0, "msg": "接收成功"}
TENCENT_ACK = {"result": 0, "errmsg": "OK"}


def post(url: str, body: bytes) -> tuple[int, bytes]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("tests post to the local listener only")
    request = urllib.request.Request(  # noqa: S310 - checked above
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
        # The server may answer 413 and close before a 10 MB upload is finished.
        return 413, b""


def issue_and_find(served: ServedProcess, phone: str) -> str:
    """Issue a REGISTER code; the message id the dev provider wrote for it."""
    before = len(served.outbox())
    served.issue_code(phone)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = served.outbox()
        if len(lines) > before:
            return lines[-1]["message_id"]
        time.sleep(0.05)
    raise AssertionError("no outbox line")


def get_delivery(served: ServedProcess, message_id: str) -> admin_pb2.Delivery:
    with grpc.insecure_channel(served.target) as channel:
        return (
            admin_pb2_grpc.AdminServiceStub(channel)
            .GetDelivery(
                admin_pb2.GetDeliveryRequest(message_id=message_id),
                metadata=served.metadata,
                timeout=10,
            )
            .delivery
        )


def test_receipts_pushed_in_each_platform_format_show_as_delivered(tmp_path: Path) -> None:
    callback_port = free_port()
    env = {
        "XIAOHE_IDENTITY_CALLBACK_LISTEN": f"127.0.0.1:{callback_port}",
        "XIAOHE_IDENTITY_CALLBACK_ALIYUN_SECRET": ALIYUN_SECRET,
        "XIAOHE_IDENTITY_CALLBACK_TENCENT_SECRET": TENCENT_SECRET,
    }
    served = start_serve(tmp_path / "var", **env)
    try:
        base = f"http://127.0.0.1:{callback_port}"
        aliyun_url = f"{base}/callbacks/aliyun/{ALIYUN_SECRET}/sms-report"
        tencent_url = f"{base}/callbacks/tencent/{TENCENT_SECRET}/sms-status"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{callback_port}/healthz", timeout=10
        ) as response:
            assert json.loads(response.read()) == {"status": "SERVING"}
        aliyun_id = issue_and_find(served, "+8613812345678")
        tencent_id = issue_and_find(served, "+8613912345678")
        for _ in range(3):
            status, body = post(aliyun_url, aliyun_push(aliyun_id).encode())
            assert (status, json.loads(body)) == (200, ALIYUN_ACK)
            status, body = post(tencent_url, tencent_push(tencent_id).encode())
            assert (status, json.loads(body)) == (200, TENCENT_ACK)
        aliyun = get_delivery(served, aliyun_id)
        tencent = get_delivery(served, tencent_id)
        assert (aliyun.delivery, aliyun.detail, aliyun.status) == ("delivered", "DELIVERED", "sent")
        assert (tencent.delivery, tencent.detail) == ("delivered", "DELIVRD")

        # The documented answers; the listener keeps serving after each.
        assert post(aliyun_url, aliyun_push("f" * 32, biz_id="1").encode())[0] == 200
        assert post(aliyun_url, b"[" + b" " * (10 * 1024 * 1024) + b"]")[0] == 413
        assert post(tencent_url, b"{not json")[0] == 200
        wrong = f"{base}/callbacks/aliyun/wrong-secret-0123456789/sms-report"
        assert post(wrong, aliyun_push(aliyun_id, success=False).encode())[0] == 404
        assert get_delivery(served, aliyun_id).delivery == "delivered"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{callback_port}/healthz", timeout=10
        ) as response:
            assert response.status == 200

        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'xiaohe_delivery_receipts_total{network="86-138",provider="file"' in metrics
        assert "1381234" not in metrics
    finally:
        assert served.stop() == 0
    log = served.log_text()
    assert ALIYUN_SECRET not in log
    assert TENCENT_SECRET not in log
    assert "13812345678" not in log

    env_cli = {"XIAOHE_IDENTITY_DATA_DIR": str(served.data_dir), "PATH": "/usr/bin:/bin"}
    shown = subprocess.run(
        [CLI, "delivery", "show", aliyun_id], env=env_cli, capture_output=True, check=True
    )
    record = json.loads(shown.stdout)
    assert (record["delivery"], record["provider"]) == ("delivered", "file")
    assert "13812345678" not in shown.stdout.decode()
    stats = subprocess.run(
        [CLI, "delivery", "stats", "--by", "prefix", "--window", "1d"],
        env=env_cli,
        capture_output=True,
        check=True,
    )
    by_prefix = {row["prefix"]: row for row in json.loads(stats.stdout)}
    assert by_prefix["86-1381234"]["delivery_ratio"] == 1.0
    assert by_prefix["86-1391234"]["delivered"] == 1
