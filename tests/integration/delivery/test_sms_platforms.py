"""Aliyun and Tencent Cloud SMS providers against local servers that check the signatures.

SECURITY X2: requests are signed by the published algorithms (the fakes
recompute the signatures themselves and reject a wrong secret); credentials
never reach a log, a repr or an error.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest

from tests.fakes.aliyun_sms import AliyunSmsFake
from tests.fakes.tencent_sms import TencentSmsFake
from xiaohe.identity.server.delivery.aliyun import AliyunSmsConfig, AliyunSmsProvider
from xiaohe.identity.server.delivery.platforms import PlatformTemplates
from xiaohe.identity.server.delivery.providers import (
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutgoingMessage,
)
from xiaohe.identity.server.delivery.templates import render_code_message
from xiaohe.identity.server.delivery.tencent import TencentSmsConfig, TencentSmsProvider

PHONE = "+8613700001111"
CODE = "390127"
AK_ID, AK_SECRET = "LTAI5tXiaoheTestKey", "aliyun-secret-Zq8w1"
SECRET_ID, SECRET_KEY = "AKIDxiaoheTestSecretId", "tencent-secret-Rb7c3"
CREDENTIALS = (AK_SECRET, SECRET_KEY)

TEMPLATES_ALIYUN = PlatformTemplates(
    "小禾企服网",
    {"LOGIN": "SMS_1001", "RESET_PASSWORD": "SMS_1002"},
    {"RESET_PASSWORD": "小禾安全"},
)
TEMPLATES_TENCENT = PlatformTemplates("小禾企服网", {"LOGIN": "2001", "RESET_PASSWORD": "2002"})


def message(message_id: str = "m1", purpose: str = "LOGIN") -> OutgoingMessage:
    return OutgoingMessage(
        message_id=message_id,
        channel="SMS",
        to=PHONE,
        purpose=purpose,
        text=render_code_message("SMS", purpose, CODE, 300),
        template_params={"code": CODE},
    )


def aliyun(url: str, secret: str = AK_SECRET, read_timeout: float = 5.0) -> AliyunSmsProvider:
    return AliyunSmsProvider(
        AliyunSmsConfig(AK_ID, secret, TEMPLATES_ALIYUN, endpoint=url, read_timeout=read_timeout)
    )


def tencent(url: str, secret: str = SECRET_KEY, timeout: float = 5.0) -> TencentSmsProvider:
    return TencentSmsProvider(
        TencentSmsConfig(
            SECRET_ID, secret, "1400000001", TEMPLATES_TENCENT, endpoint=url, timeout=timeout
        )
    )


@pytest.fixture
async def aliyun_fake() -> AsyncIterator[tuple[AliyunSmsFake, str]]:
    fake = AliyunSmsFake(AK_ID, AK_SECRET)
    url = await fake.start()
    yield fake, url
    await fake.close()


@pytest.fixture
async def tencent_fake() -> AsyncIterator[tuple[TencentSmsFake, str]]:
    fake = TencentSmsFake(SECRET_ID, SECRET_KEY)
    url = await fake.start()
    yield fake, url
    await fake.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- Aliyun -------------------------------------------------------------------------


async def test_aliyun_sends_a_signed_request_with_template_and_out_id(
    aliyun_fake: tuple[AliyunSmsFake, str],
) -> None:
    fake, url = aliyun_fake
    accepted = await aliyun(url).send(message("m-aliyun-1"))
    assert fake.rejected == []
    [sent] = fake.received
    assert (sent.phone, sent.sign_name, sent.template_code) == (PHONE, "小禾企服网", "SMS_1001")
    assert sent.template_param == {"code": CODE}
    assert sent.out_id == "m-aliyun-1"
    assert (accepted.provider, accepted.provider_message_id) == ("aliyun", sent.biz_id)


async def test_aliyun_uses_the_purpose_sign_name(aliyun_fake: tuple[AliyunSmsFake, str]) -> None:
    fake, url = aliyun_fake
    await aliyun(url).send(message(purpose="RESET_PASSWORD"))
    assert (fake.received[0].sign_name, fake.received[0].template_code) == ("小禾安全", "SMS_1002")


async def test_aliyun_wrong_secret_is_rejected_by_the_fake(
    aliyun_fake: tuple[AliyunSmsFake, str],
) -> None:
    """X2: the fake's own verifier can fail: a wrong secret gives SignatureDoesNotMatch."""
    fake, url = aliyun_fake
    with pytest.raises(DeliveryError) as info:
        await aliyun(url, secret="not-the-secret").send(message())
    assert fake.rejected == ["signature"]
    assert fake.received == []
    assert info.value.retryable
    assert info.value.failover
    assert "SignatureDoesNotMatch" in info.value.reason


@pytest.mark.parametrize(
    ("scenario", "retryable", "failover", "reason"),
    [
        ("server_error", True, True, "aliyun refused http 503 ServiceUnavailable"),
        ("throttled", True, True, "aliyun refused http 400 Throttling.User"),
        ("invalid_template", False, False, "aliyun refused isv.SMS_TEMPLATE_ILLEGAL"),
        ("number_limit", False, False, "aliyun refused isv.BUSINESS_LIMIT_CONTROL"),
    ],
)
async def test_aliyun_refusals_map_to_retryable_failover_or_permanent(
    aliyun_fake: tuple[AliyunSmsFake, str],
    scenario: str,
    retryable: bool,
    failover: bool,
    reason: str,
) -> None:
    fake, url = aliyun_fake
    fake.scenario = scenario
    with pytest.raises(DeliveryError) as info:
        await aliyun(url).send(message())
    assert not isinstance(info.value, DeliveryOutcomeUnknown)
    assert (info.value.retryable, info.value.failover) == (retryable, failover)
    assert (info.value.reason, info.value.provider) == (reason, "aliyun")
    assert PHONE not in str(info.value)
    assert CODE not in str(info.value)


async def test_aliyun_timeout_after_accepting_is_an_unknown_outcome(
    aliyun_fake: tuple[AliyunSmsFake, str],
) -> None:
    fake, url = aliyun_fake
    fake.scenario = "hang"
    with pytest.raises(DeliveryOutcomeUnknown) as info:
        await aliyun(url, read_timeout=0.3).send(message())
    assert len(fake.accepted) == 1
    assert not info.value.idempotent
    assert not info.value.failover
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


async def test_aliyun_connection_refused_is_definitely_not_sent() -> None:
    with pytest.raises(DeliveryError) as info:
        await aliyun(closed_port_url()).send(message())
    assert not isinstance(info.value, DeliveryOutcomeUnknown)
    assert info.value.retryable
    assert info.value.failover
    assert info.value.reason == "aliyun connection error"


async def test_a_purpose_without_template_is_passed_on_not_sent(
    aliyun_fake: tuple[AliyunSmsFake, str],
) -> None:
    fake, url = aliyun_fake
    with pytest.raises(DeliveryError) as info:
        await aliyun(url).send(message(purpose="REGISTER"))
    assert (info.value.retryable, info.value.failover) == (False, True)
    assert fake.received == []


# -- Tencent Cloud --------------------------------------------------------------------


async def test_tencent_sends_a_signed_request_with_session_context(
    tencent_fake: tuple[TencentSmsFake, str],
) -> None:
    fake, url = tencent_fake
    accepted = await tencent(url).send(message("m-tencent-1"))
    assert fake.rejected == []
    [sent] = fake.received
    assert (sent.phone, sent.sdk_app_id, sent.sign_name, sent.template_id) == (
        PHONE,
        "1400000001",
        "小禾企服网",
        "2001",
    )
    assert sent.template_params == [CODE]
    assert sent.session_context == "m-tencent-1"
    assert (accepted.provider, accepted.provider_message_id) == ("tencent", sent.serial_no)


async def test_tencent_wrong_secret_is_rejected_by_the_fake(
    tencent_fake: tuple[TencentSmsFake, str],
) -> None:
    """X2: the fake's TC3 verifier can fail: a wrong key gives AuthFailure.SignatureFailure."""
    fake, url = tencent_fake
    with pytest.raises(DeliveryError) as info:
        await tencent(url, secret="not-the-key").send(message())
    assert fake.rejected == ["signature"]
    assert fake.received == []
    assert info.value.reason == "tencent refused AuthFailure.SignatureFailure"
    assert info.value.retryable
    assert info.value.failover


@pytest.mark.parametrize(
    ("scenario", "retryable", "failover", "reason"),
    [
        ("server_error", True, True, "tencent http error"),
        ("throttled", True, True, "tencent refused RequestLimitExceeded"),
        (
            "invalid_template",
            False,
            False,
            "tencent refused FailedOperation.TemplateIncorrectOrUnapproved",
        ),
        ("number_limit", False, False, "tencent refused LimitExceeded.PhoneNumberDailyLimit"),
    ],
)
async def test_tencent_refusals_map_to_retryable_failover_or_permanent(
    tencent_fake: tuple[TencentSmsFake, str],
    scenario: str,
    retryable: bool,
    failover: bool,
    reason: str,
) -> None:
    fake, url = tencent_fake
    fake.scenario = scenario
    with pytest.raises(DeliveryError) as info:
        await tencent(url).send(message())
    assert not isinstance(info.value, DeliveryOutcomeUnknown)
    assert (info.value.retryable, info.value.failover) == (retryable, failover)
    assert (info.value.reason, info.value.provider) == (reason, "tencent")


async def test_tencent_timeout_after_accepting_is_an_unknown_outcome(
    tencent_fake: tuple[TencentSmsFake, str],
) -> None:
    fake, url = tencent_fake
    fake.scenario = "hang"
    with pytest.raises(DeliveryOutcomeUnknown) as info:
        await tencent(url, timeout=0.3).send(message())
    assert len(fake.accepted) == 1
    assert not info.value.idempotent


async def test_tencent_connection_refused_is_definitely_not_sent() -> None:
    with pytest.raises(DeliveryError) as info:
        await tencent(closed_port_url()).send(message())
    assert not isinstance(info.value, DeliveryOutcomeUnknown)
    assert info.value.reason == "tencent connection error"


# -- secrets ----------------------------------------------------------------------------


async def test_credentials_and_personal_data_never_reach_logs_reprs_or_errors(
    aliyun_fake: tuple[AliyunSmsFake, str],
    tencent_fake: tuple[TencentSmsFake, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """X2 and C4: every outcome, with all loggers at DEBUG, shows no secret, phone or code."""
    caplog.set_level(logging.DEBUG)
    (a_fake, a_url), (t_fake, t_url) = aliyun_fake, tencent_fake
    shown: list[str] = []
    providers = [aliyun(a_url, read_timeout=0.3), tencent(t_url, timeout=0.3)]
    configs = [
        AliyunSmsConfig(AK_ID, AK_SECRET, TEMPLATES_ALIYUN, endpoint=a_url),
        TencentSmsConfig(SECRET_ID, SECRET_KEY, "1400000001", TEMPLATES_TENCENT, endpoint=t_url),
    ]
    shown += [repr(p) for p in providers] + [repr(c) for c in configs]
    for scenario in ("ok", "server_error", "throttled", "invalid_template", "hang"):
        a_fake.scenario = t_fake.scenario = scenario
        for provider in providers:
            try:
                await provider.send(message())
            except DeliveryError as exc:
                shown += [str(exc), repr(exc), exc.reason]
    for provider in (aliyun(closed_port_url()), aliyun(a_url, secret="x"), tencent(t_url, "x")):
        try:
            await provider.send(message())
        except DeliveryError as exc:
            shown += [str(exc), repr(exc)]
    shown += [r.getMessage() for r in caplog.records]
    everything = "\n".join(shown)
    assert "aliyun refused" in everything
    assert "tencent refused" in everything
    for secret in (*CREDENTIALS, PHONE, PHONE.removeprefix("+86"), CODE):
        assert secret not in everything
