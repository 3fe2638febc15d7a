"""The HTTP identity-check adapter against a local service that checks its signatures (X2)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import date

import pytest

from tests.fakes.identity_check import IdentityCheckService
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.realname.claims import LegalPersonClaim, NaturalPersonClaim
from xiaohe.identity.server.realname.verifiers import (
    HttpVerifier,
    HttpVerifierConfig,
    Outcome,
    sign_request,
    string_to_sign,
)
from xiaohe.identity.server.shared.identifiers import IdType

ID_NUMBER = "11010519491231002X"
SECRET = "s3cr3t-app-secret-0123456789"


def person(name: str = "张三丰", id_number: str = ID_NUMBER, phone: str = "") -> NaturalPersonClaim:
    return NaturalPersonClaim(
        name=name,
        id_type=IdType.RESIDENT_ID_CARD,
        id_number=id_number,
        valid_from=date(2020, 1, 1),
        valid_until=None,
        address="青海",
        phone=phone,
    )


def company(representative: str = "张三丰") -> LegalPersonClaim:
    return LegalPersonClaim(
        organization_name="青海小禾科技服务有限公司",
        organization_type="ENTERPRISE",
        uscc="91350100M000100Y43",
        representative_type="LEGAL_REPRESENTATIVE",
        representative_name=representative,
        representative_id_type=IdType.RESIDENT_ID_CARD,
        representative_id_number=ID_NUMBER,
        address="青海",
    )


@pytest.fixture
async def service(clock: FakeClock) -> AsyncIterator[IdentityCheckService]:
    svc = IdentityCheckService("app-key-1", SECRET, lambda: int(clock.now() * 1000))
    svc.people[ID_NUMBER] = "张三丰"
    svc.phones[ID_NUMBER] = "13812345678"
    svc.companies["91350100M000100Y43"] = ("青海小禾科技服务有限公司", "张三丰", ID_NUMBER)
    await svc.start()
    yield svc
    await svc.close()


def verifier(service: IdentityCheckService, clock: FakeClock, secret: str = SECRET) -> HttpVerifier:
    assert service.server is not None
    config = HttpVerifierConfig(
        base_url=service.server.url + "/gateway", app_key="app-key-1", app_secret=secret
    )
    return HttpVerifier(config, clock)


async def test_two_and_three_element_checks(
    service: IdentityCheckService, clock: FakeClock
) -> None:
    """X2: signed requests are accepted; a match earns level 2, a wrong name is a mismatch,
    an unknown number goes to review, a phone makes it a three-element check."""
    v = verifier(service, clock)
    match = await v.check_natural(person())
    assert (match.outcome, match.level) == (Outcome.MATCH, 2)
    assert (await v.check_natural(person(name="李四"))).outcome is Outcome.MISMATCH
    assert (await v.check_natural(person(id_number="440524188001010014"))).outcome is Outcome.REVIEW
    three = await v.check_natural(person(phone="+8613812345678"))
    assert three.outcome is Outcome.MATCH
    wrong_phone = await v.check_natural(person(phone="+8613987654321"))
    assert wrong_phone.outcome is Outcome.MISMATCH
    paths = [p for p, _ in service.requests]
    assert paths[0] == "/gateway/v1/idcard/two-elements"
    assert paths[3] == "/gateway/v1/idcard/three-elements"
    assert service.requests[3][1]["mobile"] == "13812345678"
    assert service.refused == []


async def test_enterprise_four_elements(service: IdentityCheckService, clock: FakeClock) -> None:
    """The enterprise check sends organisation, USCC, representative name and ID number."""
    v = verifier(service, clock)
    assert (await v.check_legal(company())).outcome is Outcome.MATCH
    assert (await v.check_legal(company(representative="李四"))).outcome is Outcome.MISMATCH
    assert service.requests[0][0] == "/gateway/v1/enterprise/four-elements"
    assert set(service.requests[0][1]) == {
        "organization_name",
        "uscc",
        "representative_name",
        "representative_id_number",
    }


async def test_a_wrong_secret_is_refused_and_becomes_unavailable(
    service: IdentityCheckService, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """X2: the service refuses a bad signature; the caller sees UNAVAILABLE with no
    element, key or secret in the message or the log."""
    caplog.set_level(logging.DEBUG)
    v = verifier(service, clock, secret="not-the-secret-0000000000")
    with pytest.raises(Unavailable) as failed:
        await v.check_natural(person())
    assert service.refused == ["signature"]
    text = str(failed.value) + caplog.text
    for secret in (SECRET, "not-the-secret", ID_NUMBER, "张三丰"):
        assert secret not in text
    assert "not-the-secret" not in repr(v)
    assert "<hidden>" in repr(v)


async def test_an_unreachable_service_is_unavailable(clock: FakeClock) -> None:
    """No answer (a closed port) is UNAVAILABLE, not a verdict."""
    config = HttpVerifierConfig(
        base_url="http://127.0.0.1:9/gateway", app_key="k", app_secret=SECRET, timeout_seconds=1
    )
    with pytest.raises(Unavailable):
        await HttpVerifier(config, clock).check_natural(person())


def test_the_signature_covers_method_headers_and_path() -> None:
    """X2: the canonical string holds the method, the content headers, the signed headers in
    order and the path; changing any signed part changes the signature."""
    body = b'{"a":1}'
    headers = sign_request(
        app_key="k", app_secret=SECRET, path="/p", body=body, timestamp_ms=1, nonce="n"
    )
    text = string_to_sign("POST", "/p", headers)
    assert text.splitlines() == [
        "POST",
        "application/json",
        headers["Content-MD5"],
        "application/json; charset=utf-8",
        "",
        "x-ca-key:k",
        "x-ca-nonce:n",
        "x-ca-timestamp:1",
        "/p",
    ]
    other = sign_request(
        app_key="k", app_secret=SECRET, path="/p", body=body, timestamp_ms=1, nonce="m"
    )
    assert other["X-Ca-Signature"] != headers["X-Ca-Signature"]


async def test_a_passport_is_not_sent(service: IdentityCheckService, clock: FakeClock) -> None:
    """The public checks cover resident ID cards only: other documents go to review unsent."""
    claim = NaturalPersonClaim(
        name="John Smith",
        id_type=IdType.PASSPORT,
        id_number="E12345678",
        valid_from=None,
        valid_until=None,
        address="",
    )
    assert (await verifier(service, clock).check_natural(claim)).outcome is Outcome.REVIEW
    assert service.requests == []
