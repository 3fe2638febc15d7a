"""What a real-name submission claims, and the rule checks any claim must pass.

The rules are the ones a registry would apply before anything else, after the
request's shape was checked (flows/realname.py):

- Resident ID cards (GB 11643-1999): the check character and a birth date
  that exists and is not in the future; the person must be at least
  `min_age` years old on the day (18 by default: a minor cannot be the
  subject of a real-name verification on a business platform; 16 may be set,
  the age from which the Civil Code treats a person living on their own
  income as fully capable).
- Every identity document: `valid_from` not in the future and `valid_until`
  not passed; a document without `valid_until` is long-term (长期).
- Organisations: the GB 32100-2015 check character of the USCC and the GB
  11714 check character of the organisation code inside it, or of a
  9-character organisation code given alone.

Other document types (passports, permits) carry no check character and no
birth date: the rules cannot vouch for them, so they need a reviewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Final

from xiaohe.identity.server.shared.identifiers import (
    IdType,
    org_code_check_matches,
    resident_id_birth_date,
    resident_id_check_matches,
    uscc_check_matches,
)

DEFAULT_MIN_AGE: Final = 18


@dataclass(frozen=True)
class NaturalPersonClaim:
    """A natural person's identity as submitted (normalised)."""

    name: str = field(repr=False)
    id_type: IdType
    id_number: str = field(repr=False)
    valid_from: date | None
    valid_until: date | None
    """None: long-term (长期)."""
    address: str = field(repr=False)
    phone: str = field(default="", repr=False)
    """The account's bound phone (E.164), for a three-element check; "" when none."""


@dataclass(frozen=True)
class LegalPersonClaim:
    """A legal person's identity as submitted (normalised)."""

    organization_name: str
    organization_type: str
    uscc: str
    """An 18-character USCC or a 9-character organisation code."""
    representative_type: str
    representative_name: str = field(repr=False)
    representative_id_type: IdType
    representative_id_number: str = field(repr=False)
    address: str = field(repr=False)


@dataclass(frozen=True)
class RuleProblem:
    """Why a claim fails the rules: the field and a reason in words for the user."""

    field: str
    reason: str


def _age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def resident_id_problem(
    id_number: str, field_name: str, today: date, min_age: int
) -> RuleProblem | None:
    """Why an 18-character resident ID number fails GB 11643 or the age rule, or None."""
    if len(id_number) != 18 or not id_number[:17].isdigit():
        return RuleProblem(field_name, "is not an 18-character resident ID number")
    if not resident_id_check_matches(id_number):
        return RuleProblem(field_name, "the check digit does not match (GB 11643)")
    birth = resident_id_birth_date(id_number)
    if birth is None or birth > today:
        return RuleProblem(field_name, "the birth date in the number does not exist")
    if _age_on(birth, today) < min_age:
        return RuleProblem(field_name, f"the person must be at least {min_age} years old")
    return None


def validity_problem(
    valid_from: date | None, valid_until: date | None, today: date
) -> RuleProblem | None:
    """Why a document's validity period does not cover today, or None."""
    if valid_from is not None and valid_from > today:
        return RuleProblem("valid_from", "the document is not valid yet")
    if valid_until is not None and valid_until < today:
        return RuleProblem("valid_until", "the document has expired")
    if valid_from is not None and valid_until is not None and valid_until < valid_from:
        return RuleProblem("valid_until", "ends before the document's valid_from")
    return None


def uscc_problem(code: str, field_name: str = "uscc") -> RuleProblem | None:
    """Why a USCC (GB 32100) or 9-character organisation code (GB 11714) fails, or None."""
    if len(code) == 9:
        if not org_code_check_matches(code):
            return RuleProblem(field_name, "the organisation code check digit does not match")
        return None
    if len(code) != 18:
        return RuleProblem(field_name, "is neither a USCC nor an organisation code")
    if not uscc_check_matches(code):
        return RuleProblem(field_name, "the check digits do not match (GB 32100, GB 11714)")
    return None


def natural_problems(
    claim: NaturalPersonClaim, today: date, min_age: int = DEFAULT_MIN_AGE
) -> list[RuleProblem]:
    """Every rule a natural person's claim fails (empty: it passes)."""
    problems: list[RuleProblem] = []
    if claim.id_type is IdType.RESIDENT_ID_CARD:
        problem = resident_id_problem(claim.id_number, "id_number", today, min_age)
        if problem is not None:
            problems.append(problem)
    validity = validity_problem(claim.valid_from, claim.valid_until, today)
    if validity is not None:
        problems.append(validity)
    return problems


def legal_problems(
    claim: LegalPersonClaim, today: date, min_age: int = DEFAULT_MIN_AGE
) -> list[RuleProblem]:
    """Every rule a legal person's claim fails (empty: it passes)."""
    problems: list[RuleProblem] = []
    problem = uscc_problem(claim.uscc)
    if problem is not None:
        problems.append(problem)
    if claim.representative_id_type is IdType.RESIDENT_ID_CARD:
        rep = resident_id_problem(
            claim.representative_id_number, "representative_id_number", today, min_age
        )
        if rep is not None:
            problems.append(rep)
    return problems


def rules_can_vouch_for(id_type: IdType) -> bool:
    """Whether the rules can check a document of this type (only resident ID cards)."""
    return id_type is IdType.RESIDENT_ID_CARD


def mask_person_name(name: str) -> str:
    """A person's name with all but its first character masked (张** for 张三丰)."""
    if not name:
        return ""
    return name[0] + "*" * max(len(name) - 1, 1)


def mask_organization_name(name: str) -> str:
    """An organisation's name with its middle masked (青海****公司)."""
    if len(name) <= 4:
        return name[:1] + "*" * max(len(name) - 1, 1)
    return name[:2] + "*" * (len(name) - 4) + name[-2:]
