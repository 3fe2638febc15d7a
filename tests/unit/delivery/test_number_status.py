"""The number-status check on Aliyun's 二次号 API, against a local server that checks signatures.

The server (`tests/fakes/number_status.py`) recomputes every request's
ACS3-HMAC-SHA256 signature by the published algorithm, so these tests prove the
SDK is driven with the right action, version, parameters and keys (SECURITY X2).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from tests.fakes.number_status import FakeNumberStatusService, national_digest
from xiaohe.identity.server.delivery.number_status import (
    AliyunNumberStatusCheck,
    NumberStatus,
    masked_number,
    start_time,
)

KEY_ID = "LTAI-test-key"
SECRET = "test-secret-0123456789abcdef"
AUTH_CODE = "Dd1r-test-auth"
PHONE = "+8613812345678"
BOUND_AT = 1_700_000_000.0  # 2023-11-15 06:13:20 in China


@pytest.fixture
async def service() -> AsyncIterator[FakeNumberStatusService]:
    """The fake service on a free loopback port."""
    fake = FakeNumberStatusService(KEY_ID, SECRET, AUTH_CODE)
    await fake.start()
    yield fake
    await fake.close()


def check_for(service: FakeNumberStatusService, **changes: str) -> AliyunNumberStatusCheck:
    """A check pointed at the fake, with the right keys unless overridden."""
    kwargs = {
        "access_key_id": KEY_ID,
        "access_key_secret": SECRET,
        "auth_code": AUTH_CODE,
        "endpoint": service.url,
    }
    kwargs.update(changes)
    return AliyunNumberStatusCheck(**kwargs)


@pytest.mark.parametrize(
    ("verify_result", "status"),
    [
        ("1", NumberStatus.RECYCLED),
        ("2", NumberStatus.NOT_RECYCLED),
        ("3", NumberStatus.CANCELLED),
        ("4", NumberStatus.RECYCLED),
        ("0", NumberStatus.UNKNOWN),
    ],
)
async def test_each_verify_result_maps_to_a_status(
    service: FakeNumberStatusService, verify_result: str, status: NumberStatus
) -> None:
    """H3: the service's VerifyResult decides the answer; a signed, well-formed request."""
    service.answer(PHONE, verify_result)
    assert await check_for(service).status_since(PHONE, BOUND_AT) is status
    assert service.rejected == []
    (query,) = service.requests
    assert query["Mask"] == "SHA256"
    assert query["InputNumber"] == national_digest(PHONE) == masked_number(PHONE)
    assert query["StartTime"] == start_time(BOUND_AT) == "2023-11-15 06:13:20"
    assert query["AuthCode"] == AUTH_CODE


async def test_the_number_never_leaves_in_the_clear(service: FakeNumberStatusService) -> None:
    """I1: only the digest of the number reaches the service."""
    await check_for(service).status_since(PHONE, BOUND_AT)
    (query,) = service.requests
    assert all("13812345678" not in value for value in query.values())


async def test_a_wrong_secret_is_rejected_by_the_signature_check(
    service: FakeNumberStatusService, caplog: pytest.LogCaptureFixture
) -> None:
    """X2: the fake refuses a request signed with another secret, and the check says UNKNOWN
    without logging the secret, the auth code or the number."""
    service.answer(PHONE, "1")
    caplog.set_level(logging.DEBUG)
    wrong = check_for(service, access_key_secret="not-the-secret-at-all")
    assert await wrong.status_since(PHONE, BOUND_AT) is NumberStatus.UNKNOWN
    assert service.rejected == ["SignatureDoesNotMatch"]
    assert service.requests == []
    for secret in ("not-the-secret-at-all", AUTH_CODE, "13812345678", national_digest(PHONE)):
        assert secret not in caplog.text
    # The same request with the right secret goes through: the refusal was the signature's.
    assert await check_for(service).status_since(PHONE, BOUND_AT) is NumberStatus.RECYCLED


async def test_a_wrong_key_id_or_auth_code_is_unknown(service: FakeNumberStatusService) -> None:
    """A refused key id or auth code is UNKNOWN (the flow's policy decides), never an error."""
    service.answer(PHONE, "1")
    assert (
        await check_for(service, access_key_id="LTAI-other").status_since(PHONE, BOUND_AT)
        is NumberStatus.UNKNOWN
    )
    assert (
        await check_for(service, auth_code="other").status_since(PHONE, BOUND_AT)
        is NumberStatus.UNKNOWN
    )
    assert service.rejected == ["InvalidAccessKeyId.NotFound", "isv.AUTH_CODE_INVALID"]


async def test_a_code_other_than_ok_is_unknown(service: FakeNumberStatusService) -> None:
    """RequestFrequencyLimit, unsupported numbers and the like carry no result."""
    service.answer(PHONE, "1", code="RequestFrequencyLimit")
    assert await check_for(service).status_since(PHONE, BOUND_AT) is NumberStatus.UNKNOWN


async def test_an_unreachable_service_is_unknown(service: FakeNumberStatusService) -> None:
    """A transport failure is UNKNOWN, not an exception."""
    url = service.url
    await service.close()
    check = check_for(service, endpoint=url)
    assert await check.status_since(PHONE, BOUND_AT) is NumberStatus.UNKNOWN


async def test_numbers_outside_the_mainland_are_not_asked(service: FakeNumberStatusService) -> None:
    """The service knows mainland mobile numbers only: others are UNKNOWN without a request."""
    assert await check_for(service).status_since("+85261234567", BOUND_AT) is NumberStatus.UNKNOWN
    assert service.requests == []
    assert service.rejected == []


def test_the_repr_holds_no_secret() -> None:
    """X2: keys and auth code never reach a repr."""
    check = AliyunNumberStatusCheck(
        access_key_id=KEY_ID,
        access_key_secret=SECRET,
        auth_code=AUTH_CODE,
        endpoint="https://status.example.cn",
    )
    assert SECRET not in repr(check)
    assert AUTH_CODE not in repr(check)
