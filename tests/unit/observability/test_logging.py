"""JSON logs carry the request context and never personal data, codes or tokens."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xiaohe.identity.server import context
from xiaohe.identity.server.observability.logging import configure_logging, redact

ACCESS_LOGGER = (
    "xiaohe.identity.access"  # operators filter on this name: it is part of the contract
)
PHONE = "13812341234"
PHONE_E164 = "+8613812341234"
EMAIL = "zhangsan@example.com"
ID_NUMBER = "11010519491231002X"
USCC = "91350100M000100Y43"
CODE = "482913"
JWT = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIiwidHlwIjoiYXQrand0In0"
    ".eyJzdWIiOiJhY2N0XzEiLCJleHAiOjE3OTAwMDA2MDB9"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYWJjZGVmZ2hpams"
)
TICKET = "vt1.Zq3xR8mK2pL9wN4v"
REFRESH = "Qm9ndXNSZWZyZXNoVG9rZW5Gb3JUZXN0aW5nMTIzNDU2Nzg5MA"
PASSWORD = "Tr0ub4dor&3"

SECRETS = (PHONE, EMAIL, ID_NUMBER, USCC, CODE, JWT, TICKET, REFRESH, PASSWORD, "zhangsan")


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Configure JSON logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    tuned = [logging.getLogger(name) for name in (ACCESS_LOGGER, "grpc")]
    saved_levels = [logger.level for logger in tuned]
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved_level)
    for logger, level in zip(tuned, saved_levels, strict=True):
        logger.setLevel(level)
    logging.captureWarnings(False)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret
    assert "13812341234" not in text.replace(" ", "").replace("-", "")


def test_lines_are_json_with_context(log_output: io.StringIO) -> None:
    token = context.bind(context.RequestContext(request_id="req-7f3a", client_id="bff-web"))
    try:
        logging.getLogger("xiaohe.test").info("issued %s", "a code", extra={"channel": "SMS"})
    finally:
        context.reset(token)
    logging.getLogger("xiaohe.test").warning("outside")
    first, second = _lines(log_output)
    assert first["msg"] == "issued a code"
    assert first["level"] == "INFO"
    assert first["logger"] == "xiaohe.test"
    assert (first["request_id"], first["client_id"]) == ("req-7f3a", "bff-web")
    assert "worker" not in first  # not a worker process: no index, and never a PID
    assert first["extra"] == {"channel": "SMS"}
    assert first["ts"].endswith("+00:00")
    assert (second["request_id"], second["client_id"]) == ("-", "")
    assert "extra" not in second


def test_uuid_request_ids_survive(log_output: io.StringIO) -> None:
    rid = "3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"
    token = context.bind(context.RequestContext(request_id=rid))
    try:
        logging.getLogger("t").info("request %s done", rid)
    finally:
        context.reset(token)
    (line,) = _lines(log_output)
    assert line["request_id"] == rid
    assert line["msg"] == f"request {rid} done"


def test_personal_data_in_message_is_masked(log_output: io.StringIO) -> None:
    """[C4][I1] Phone, email, ID, code, JWT and ticket in the message never reach the output."""
    logging.getLogger("t").info(
        f"login {PHONE} mail {EMAIL} id {ID_NUMBER} org {USCC} 验证码：{CODE} "
        f"jwt {JWT} ticket {TICKET} refresh {REFRESH} password={PASSWORD}"
    )
    text = log_output.getvalue()
    _assert_clean(text)
    msg = _lines(log_output)[0]["msg"]
    assert "138****1234" in msg
    assert "z***@example.com" in msg
    assert "110*************2X" in msg
    assert "验证码：******" in msg
    assert msg.count("[redacted]") == 4


def test_personal_data_in_args_is_masked(log_output: io.StringIO) -> None:
    """[C4][I1] %-arguments are redacted after formatting."""
    logging.getLogger("t").info(
        "send code %s to %s / %s (id %s) with %s and %s",
        CODE,
        PHONE_E164,
        EMAIL,
        ID_NUMBER,
        JWT,
        TICKET,
    )
    _assert_clean(log_output.getvalue())
    msg = _lines(log_output)[0]["msg"]
    assert msg.startswith("send code ****** to 138****1234 / z***@example.com")


def test_personal_data_in_extra_is_masked(log_output: io.StringIO) -> None:
    """[C4][I1] Extra fields are redacted, nested values and numbers included."""
    logging.getLogger("t").info(
        "delivered",
        extra={
            "phone": PHONE,
            "phone_int": int(PHONE),
            "dest": {"email": EMAIL, "ids": [ID_NUMBER, USCC]},
            "sms_text": f"您的验证码是{CODE}，5分钟内有效",
            "authorization": f"Bearer {JWT}",
            "header": f"Bearer {JWT}",
            "ticket": TICKET,
            "attempts": 2,
            "code": CODE,
            "sms_code": int(CODE),
            "status_code": "OK",
            "client_secret": "s3cr3t-value",
        },
    )
    _assert_clean(log_output.getvalue())
    extra = _lines(log_output)[0]["extra"]
    assert extra["phone"] == "138****1234"
    assert extra["phone_int"] == "138****1234"
    assert extra["dest"]["email"] == "z***@example.com"
    assert extra["sms_text"] == "您的验证码是******，5分钟内有效"
    assert extra["authorization"] == "[redacted]"  # a secret-like field name drops the value
    assert extra["header"] == "Bearer [redacted]"
    assert extra["ticket"] == "[redacted]"
    assert extra["attempts"] == 2
    assert (extra["code"], extra["sms_code"], extra["status_code"]) == ("******", "******", "OK")
    assert extra["client_secret"] == "[redacted]"
    assert "s3cr3t-value" not in log_output.getvalue()


def test_personal_data_in_exception_is_masked(log_output: io.StringIO) -> None:
    """[C4][I1] The traceback text (including the exception message) is redacted."""
    try:
        raise RuntimeError(
            f"lookup failed for {PHONE_E164} / {EMAIL} / {ID_NUMBER} code {CODE} {JWT}"
        )
    except RuntimeError:
        logging.getLogger("t").exception("unexpected error for %s", TICKET)
    _assert_clean(log_output.getvalue())
    line = _lines(log_output)[0]
    assert line["level"] == "ERROR"
    assert "Traceback" in line["exc"]
    assert "RuntimeError: lookup failed for 138****1234 / z***@example.com" in line["exc"]
    assert line["msg"] == "unexpected error for [redacted]"


def test_file_output_is_redacted_too(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = list(root.handlers)
    path = tmp_path / "server.log"
    stream = io.StringIO()
    try:
        configure_logging("INFO", stream=stream, file=str(path))
        configure_logging("INFO", stream=stream, file=str(path))  # idempotent: no duplicate lines
        logging.getLogger("t").info("phone %s", PHONE)
        logging.getLogger("t").debug("below the level")
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)
                handler.close()
        logging.captureWarnings(False)
    for text in (path.read_text(encoding="utf-8"), stream.getvalue()):
        lines = text.splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["msg"] == "phone 138****1234"


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", stream=io.StringIO())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("call +86 138-1234-1234 now", "call 138****1234 now"),
        ("call 86 13812341234", "call 138****1234"),
        ("order 20240101123456789", "order 20240101123456789"),
        ("code: 123456", "code: ******"),
        ("123456 is your OTP", "****** is your OTP"),
        ("port 123456", "port 123456"),
        ('{"password": "hunter2", "user": "u1"}', '{"password": "[redacted]", "user": "u1"}'),
        ("client_secret=abc&x=1", "client_secret=[redacted]&x=1"),
        ("hash " + "ab12" * 16, "hash [redacted]"),
        ("row a1b2c3d4e5f60718293a4b5c6d7e8f90 ok", "row a1b2c3d4e5f60718293a4b5c6d7e8f90 ok"),
        ("File tests/unit/observability/test_logging.py, line 3", None),
    ],
)
def test_redact_rules(raw: str, expected: str | None) -> None:
    assert redact(raw) == (raw if expected is None else expected)


def test_a_workers_lines_carry_its_index_not_its_pid(log_output: io.StringIO) -> None:
    """Worker 1 is worker 1 after a restart too; a PID says nothing an operator can use."""
    configure_logging("INFO", stream=log_output, worker=1)
    logging.getLogger("xiaohe.test").info("serving")
    (line,) = _lines(log_output)
    assert line["worker"] == 1
    assert os.getpid() not in line.values()


def test_grpcs_own_loggers_stay_quiet_at_debug(
    log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOG_LEVEL=DEBUG shows our debug lines, not grpc's; grpc warnings still come through."""
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    configure_logging("DEBUG", stream=log_output)
    logging.getLogger("grpc._cython.cygrpc").debug("Using AsyncIOEngine.POLLER as I/O engine")
    logging.getLogger("grpc.aio").info("channel noise")
    logging.getLogger("grpc._server").warning("a real grpc warning")
    logging.getLogger("xiaohe.test").debug("ours")
    assert [line["msg"] for line in _lines(log_output)] == ["a real grpc warning", "ours"]


def test_grpcs_loggers_follow_the_level_when_the_operator_sets_grpc_verbosity(
    log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "debug")
    configure_logging("DEBUG", stream=log_output)
    logging.getLogger("grpc._cython.cygrpc").debug("engine chosen")
    assert [line["msg"] for line in _lines(log_output)] == ["engine chosen"]


def test_the_access_log_can_be_turned_off(log_output: io.StringIO) -> None:
    configure_logging("INFO", stream=log_output, access_log=False)
    logging.getLogger(ACCESS_LOGGER).info("/x.Y/Z OK 1.0 ms")
    logging.getLogger(ACCESS_LOGGER).warning("still shown")
    configure_logging("INFO", stream=log_output)
    logging.getLogger(ACCESS_LOGGER).info("/x.Y/Z OK 2.0 ms")
    assert [line["msg"] for line in _lines(log_output)] == ["still shown", "/x.Y/Z OK 2.0 ms"]
