"""The rule verifier's checks: GB 11643, GB 32100, GB 11714, age and validity dates."""

from __future__ import annotations

from datetime import date

import pytest

from xiaohe.identity.server.realname.claims import (
    LegalPersonClaim,
    NaturalPersonClaim,
    legal_problems,
    mask_organization_name,
    mask_person_name,
    natural_problems,
    resident_id_problem,
    uscc_problem,
    validity_problem,
)
from xiaohe.identity.server.shared.identifiers import IdType

TODAY = date(2026, 12, 3)


@pytest.mark.parametrize("number", ["11010519491231002X", "440524188001010014"])
def test_valid_resident_ids_pass(number: str) -> None:
    """The SECURITY.md test vectors of GB 11643 pass."""
    assert resident_id_problem(number, "id_number", TODAY, 18) is None


def test_a_wrong_check_digit_or_birth_date_fails() -> None:
    """GB 11643: a changed check character, or a birth date that does not exist, fails."""
    wrong = resident_id_problem("110105194912310021", "id_number", TODAY, 18)
    assert wrong is not None
    assert "check digit" in wrong.reason
    # 1949-02-30 with a matching check character.
    body = "11010519490230002"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    no_day = resident_id_problem(body + check, "id_number", TODAY, 18)
    assert no_day is not None
    assert "birth date" in no_day.reason


def test_the_age_boundary() -> None:
    """Age: 18 on the birthday itself passes, the day before fails; 16 may be configured."""
    number = "110105200812030011"  # born 2008-12-03, check digit per GB 11643
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    body = number[:17]
    number = body + "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    assert resident_id_problem(number, "id_number", TODAY, 18) is None
    young = resident_id_problem(number, "id_number", date(2026, 12, 2), 18)
    assert young is not None
    assert "18" in young.reason
    assert resident_id_problem(number, "id_number", date(2024, 12, 3), 16) is None


@pytest.mark.parametrize("code", ["91350100M000100Y43", "91310110666007217T", "M000100Y4"])
def test_valid_organisation_codes_pass(code: str) -> None:
    """GB 32100 USCC vectors and a GB 11714 organisation code pass."""
    assert uscc_problem(code) is None


@pytest.mark.parametrize("code", ["91350100M000100Y44", "M000100Y5", "9135010"])
def test_invalid_organisation_codes_fail(code: str) -> None:
    """A wrong check character or length fails."""
    assert uscc_problem(code) is not None


def test_validity_dates() -> None:
    """Not valid yet, expired and inverted periods fail; long-term (no end) passes."""
    assert validity_problem(date(2020, 1, 1), None, TODAY) is None
    assert validity_problem(date(2020, 1, 1), TODAY, TODAY) is None
    expired = validity_problem(date(2010, 1, 1), date(2026, 12, 2), TODAY)
    assert expired is not None
    assert expired.field == "valid_until"
    future = validity_problem(date(2026, 12, 4), None, TODAY)
    assert future is not None
    assert future.field == "valid_from"


def test_claims_collect_every_problem() -> None:
    """A claim lists every rule it fails, field by field; other document types get no
    check-digit rule."""
    claim = NaturalPersonClaim(
        name="张三",
        id_type=IdType.RESIDENT_ID_CARD,
        id_number="110105194912310021",
        valid_from=date(2010, 1, 1),
        valid_until=date(2020, 1, 1),
        address="",
    )
    assert [p.field for p in natural_problems(claim, TODAY)] == ["id_number", "valid_until"]
    passport = NaturalPersonClaim(
        name="John",
        id_type=IdType.PASSPORT,
        id_number="E12345678",
        valid_from=date(2020, 1, 1),
        valid_until=None,
        address="",
    )
    assert natural_problems(passport, TODAY) == []
    company = LegalPersonClaim(
        organization_name="青海小禾",
        organization_type="ENTERPRISE",
        uscc="91350100M000100Y44",
        representative_type="LEGAL_REPRESENTATIVE",
        representative_name="张三",
        representative_id_type=IdType.RESIDENT_ID_CARD,
        representative_id_number="110105194912310021",
        address="",
    )
    fields = [p.field for p in legal_problems(company, TODAY)]
    assert fields == ["uscc", "representative_id_number"]


def test_masks() -> None:
    """Masked names keep the family name, masked organisations their ends."""
    assert mask_person_name("张三丰") == "张**"
    assert mask_person_name("李") == "李*"
    assert mask_organization_name("青海小禾科技服务有限公司") == "青海********公司"
    claim = NaturalPersonClaim(
        name="张三丰",
        id_type=IdType.RESIDENT_ID_CARD,
        id_number="11010519491231002X",
        valid_from=None,
        valid_until=None,
        address="x",
    )
    assert "11010519491231002X" not in repr(claim)
    assert "张三丰" not in repr(claim)
