"""Identifiers: normalisation, validation, classification by shape and masking.

Every identifier is normalised before it is validated, stored (as an HMAC of the
normalised value) or looked up, so that two spellings of the same identifier can
never become two accounts. All functions here are pure: they read no files, no
network and no configuration; the only time-dependent check (a birth date in the
future) takes `today` from the caller (see `today_in_china`).

Common normalisation (`normalize`): Unicode NFKC, which turns full-width digits,
letters, `＋`, `＠` and the ideographic space into their ASCII forms; removal of
invisible format characters (zero-width space, BOM, bidi marks) that copy-paste
drags in; trimming of surrounding whitespace. Each `normalize_*` function then
applies the rules of its kind:

- Phone (`normalize_phone`): spaces and hyphens between groups are dropped. A
  number without prefix must be a mainland mobile number (11 digits, `1[3-9]…`)
  and is read as `+86`. With `+` or the international prefix `00`, the country
  code is read by the E.164 prefix structure and must be in the allowed list;
  `+86` numbers must be mainland mobiles, other allowed codes only get the E.164
  length rule (at most 15 digits in all). The result is E.164: `+8613812345678`.
- Email (`normalize_email`): ASCII dot-atom local part (1-64 characters, no
  quoted strings), a domain of at least two LDH labels whose top-level label is
  letters (or an `xn--` A-label), 254 characters at most. Internationalised
  (non-ASCII) domains are refused: the caller must send the `xn--` form. The
  whole address is lower-cased, *including the local part*: RFC 5321 lets a
  server treat the local part case-sensitively, but no mainstream provider
  does, and one canonical form is what keeps `ZhangSan@x.cn` and `zhangsan@x.cn`
  from becoming two accounts. Provider-specific aliases (dots, `+tag`) are kept.
- USCC (`normalize_uscc`, GB 32100-2015): upper-cased, 18 characters of
  `0123456789ABCDEFGHJKLMNPQRTUWXY`, characters 3-8 (administrative division)
  digits, the mod-31 check character must match, and so must the GB 11714
  check character of the embedded organization code (characters 9-17).
- Resident ID (`normalize_resident_id`, GB 11643-1999): `x` becomes `X`; 17
  digits and a digit or `X`; the birth date (characters 7-14) must exist, be
  from 1850 on and not be in the future; the mod-11 check character must match.
  15-digit first-generation numbers are not accepted.
- Other identity documents (passport, Hong Kong/Macao and Taiwan permits,
  foreign permanent resident card): upper-cased, spaces and hyphens dropped,
  5-20 ASCII letters and digits. The formats of foreign passports vary too much
  for anything stricter; documents are verified by people or a provider.
- Login name (`normalize_login_name`): 4-32 characters, an ASCII letter first,
  then ASCII letters, digits, `_`, `.` and `-`; lower-cased. A name that
  `classify` would read as another kind (in practice: 18 characters that are
  all in the USCC alphabet) is refused, so classification by shape stays
  unambiguous. Non-ASCII is refused *before* case folding, so `straße` is
  rejected rather than silently becoming `strasse`.

Violations name the request field and say in English what is wrong; they never
repeat the submitted value, which is personal data.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from datetime import date, datetime, timedelta, timezone
from enum import IntEnum

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument


class IdentifierKind(IntEnum):
    """Kind of a login identifier; values match `xiaohe.identity.v1.IdentifierKind`."""

    UNSPECIFIED = 0
    LOGIN_NAME = 1
    PHONE = 2
    USCC = 3
    ID_NUMBER = 4
    EMAIL = 5


class IdType(IntEnum):
    """Identity document type of a natural person; values match `xiaohe.identity.v1.IdType`."""

    UNSPECIFIED = 0
    RESIDENT_ID_CARD = 1
    PASSPORT = 2
    HK_MACAO_PERMIT = 3
    TAIWAN_PERMIT = 4
    FOREIGN_PERMANENT_RESIDENT = 5


CHINA_TIMEZONE = timezone(timedelta(hours=8), "China Standard Time")

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_ID_CHECK_CHARS = "10X98765432"
_MIN_BIRTH_YEAR = 1850

# E.164 country codes are a prefix code: zones 1 and 7 use one digit, the codes
# below use two, every other code uses three (ITU-T E.164 assigned country codes).
_ONE_DIGIT_COUNTRY_CODES = frozenset({"1", "7"})
_TWO_DIGIT_COUNTRY_CODES = frozenset(
    {
        *("20", "27"),
        *("30", "31", "32", "33", "34", "36", "39"),
        *("40", "41", "43", "44", "45", "46", "47", "48", "49"),
        *("51", "52", "53", "54", "55", "56", "57", "58"),
        *("60", "61", "62", "63", "64", "65", "66"),
        *("81", "82", "84", "86"),
        *("90", "91", "92", "93", "94", "95", "98"),
    }
)
_E164_MAX_DIGITS = 15

_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
_DIGITS = re.compile(r"[0-9]+")
_MAINLAND_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_EMAIL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_LOCAL = re.compile(rf"{_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*")
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOP_LEVEL_LABEL = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
_ORG_CODE = re.compile(r"[0-9A-Z]{8}[0-9X]")
_RESIDENT_ID = re.compile(r"[0-9]{17}[0-9X]")
_DOCUMENT_NUMBER = re.compile(r"[A-Z0-9]+")
_LOGIN_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
_PHONE_SHAPE = re.compile(r"1[0-9]{10}|(?:\+|00)[0-9]+")


def _violation(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation(field, description))


def _compact(value: str) -> str:
    """Drop spaces and hyphens (and look-alike dashes) people put between groups."""
    return _SEPARATORS.sub("", value)


def _ascii_upper(value: str) -> str:
    """Upper-case ASCII text only, so no non-ASCII letter can case-map into a valid one."""
    return value.upper() if value.isascii() else value


def normalize(value: str) -> str:
    """NFKC-normalise, drop invisible format characters and trim surrounding whitespace."""
    folded = unicodedata.normalize("NFKC", value)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return visible.strip()


def today_in_china(clock: Clock) -> date:
    """The calendar date in China Standard Time at the clock's current instant."""
    return datetime.fromtimestamp(clock.now(), tz=CHINA_TIMEZONE).date()


# --- Phone -----------------------------------------------------------------


def _country_code(digits: str) -> str | None:
    """The E.164 country code at the start of `digits`, or None if there is none."""
    if not digits or digits[0] == "0":
        return None
    if digits[:1] in _ONE_DIGIT_COUNTRY_CODES:
        return digits[:1]
    if digits[:2] in _TWO_DIGIT_COUNTRY_CODES:
        return digits[:2]
    return digits[:3] if len(digits) >= 3 else None


def normalize_phone(
    raw: str, field: str = "phone", allowed_country_codes: Collection[str] = ("86",)
) -> str:
    """Normalise a mobile number to E.164 (`+8613812345678`) or raise InvalidArgument."""
    value = _compact(normalize(raw))
    if not value:
        raise _violation(field, "must not be empty")
    if value.startswith("+"):
        digits, international = value[1:], True
    elif value.startswith("00"):
        digits, international = value[2:], True
    else:
        digits, international = value, False
    if not _DIGITS.fullmatch(digits):
        raise _violation(
            field,
            "must contain only digits, optionally after a leading + or 00, "
            "with spaces or hyphens between groups",
        )
    if not international:
        if not _MAINLAND_MOBILE.fullmatch(digits):
            raise _violation(
                field,
                "must be an 11-digit mainland mobile number starting with 13-19, "
                "or start with + and a country code",
            )
        if "86" not in allowed_country_codes:
            raise _violation(field, "country code +86 is not allowed")
        return "+86" + digits
    code = _country_code(digits)
    if code is None:
        raise _violation(field, "country code is missing or invalid")
    if code not in allowed_country_codes:
        raise _violation(field, f"country code +{code} is not allowed")
    national = digits[len(code) :]
    if code == "86":
        if not _MAINLAND_MOBILE.fullmatch(national):
            raise _violation(
                field, "a +86 number must be an 11-digit mainland mobile number starting with 13-19"
            )
    elif len(national) < 4 or len(digits) > _E164_MAX_DIGITS:
        raise _violation(
            field, "must have 4 or more national digits and at most 15 digits in all (E.164)"
        )
    return "+" + digits


PREFIX_DIGITS = 7
"""A number prefix (号段) is at most the first seven national digits: on the mainland it
names a carrier's block of 10,000 numbers in one region, so it is not personal data."""

SUBSCRIBER_DIGITS = 4
"""A prefix always leaves at least this many digits out, so it names 10,000 numbers or more."""


def number_prefix(phone: str) -> str:
    """The prefix of a normalised phone, `+8613812345678` → `86-1381234`; "" if not E.164.

    It keeps the first seven national digits, or fewer where the national number is
    short (`+85291234567` → `852-9123`), so that it never names fewer than 10,000
    numbers. Delivery metrics and the SMS-pumping defence count per prefix: an attack
    that spreads its requests over many numbers still lands in a few prefixes.
    """
    digits = phone[1:] if phone.startswith("+") else ""
    code = _country_code(digits) if _DIGITS.fullmatch(digits) else None
    if code is None:
        return ""
    kept = min(PREFIX_DIGITS, len(digits) - len(code) - SUBSCRIBER_DIGITS)
    if kept <= 0:
        return ""
    return f"{code}-{digits[len(code) : len(code) + kept]}"


# --- Email -----------------------------------------------------------------


def normalize_email(raw: str, field: str = "email") -> str:
    """Normalise an email address to lower case or raise InvalidArgument."""
    value = normalize(raw)
    if not value:
        raise _violation(field, "must not be empty")
    if value.count("@") != 1:
        raise _violation(field, "must contain exactly one @")
    if len(value) > 254:
        raise _violation(field, "must be at most 254 characters")
    local, domain = value.split("@")
    if not local:
        raise _violation(field, "the part before @ must not be empty")
    if len(local) > 64:
        raise _violation(field, "the part before @ must be at most 64 characters")
    if not _EMAIL_LOCAL.fullmatch(local):
        raise _violation(
            field,
            "the part before @ may contain only ASCII letters, digits and !#$%&'*+/=?^_`{|}~- "
            "with single dots between them",
        )
    if not domain.isascii():
        raise _violation(
            field, "internationalized domain names are not accepted; use the xn-- (punycode) form"
        )
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2:
        raise _violation(field, "the domain must have at least two labels, e.g. example.com")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise _violation(
            field,
            "each domain label must be 1-63 letters, digits or inner hyphens",
        )
    if not _TOP_LEVEL_LABEL.fullmatch(labels[-1]):
        raise _violation(field, "the top-level domain must be letters only (or an xn-- label)")
    return f"{local.lower()}@{domain}"


# --- USCC and organization code ------------------------------------------------


def _uscc_check_char(body: str) -> str:
    """GB 32100-2015 check character of the first 17 characters."""
    total = sum(
        USCC_ALPHABET.index(ch) * weight for ch, weight in zip(body, _USCC_WEIGHTS, strict=True)
    )
    return USCC_ALPHABET[(31 - total % 31) % 31]


def _org_code_check_char(body: str) -> str:
    """GB 11714 check character of an 8-character organization code body (A = 10 … Z = 35)."""
    total = sum(
        (int(ch) if ch.isdigit() else ord(ch) - 55) * weight
        for ch, weight in zip(body, _ORG_CODE_WEIGHTS, strict=True)
    )
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def _uscc_problem(value: str) -> str | None:
    """Why an upper-cased, compacted value is not a valid USCC, or None if it is."""
    if len(value) != 18:
        return "must be exactly 18 characters"
    if any(ch not in USCC_ALPHABET for ch in value):
        return (
            "contains invalid characters; allowed are digits and upper-case letters "
            "other than I, O, S, V and Z"
        )
    if not value[2:8].isdigit():
        return "characters 3-8 (administrative division code) must be digits"
    if _uscc_check_char(value[:17]) != value[17]:
        return "check digit does not match"
    if _org_code_check_char(value[8:16]) != value[16]:
        return "organization code check digit (character 17) does not match"
    return None


def normalize_uscc(raw: str, field: str = "uscc") -> str:
    """Normalise and validate a unified social credit code (GB 32100-2015) or raise.

    The GB 32100 check character covers all 17 preceding characters; characters
    9-17 are the organization code of GB 11714, whose own check character is
    verified too, since a code with a valid outer check but a broken inner one
    was not issued by any registry.
    """
    value = _ascii_upper(_compact(normalize(raw)))
    if not value:
        raise _violation(field, "must not be empty")
    problem = _uscc_problem(value)
    if problem is not None:
        raise _violation(field, problem)
    return value


def validate_org_code(raw: str, field: str = "org_code") -> str:
    """Validate an organization code (GB 11714) and return it as 9 characters without hyphen.

    The printed form puts a hyphen before the check character (`M000100Y-4`);
    it is accepted and dropped, so the result equals characters 9-17 of the USCC.
    """
    value = _ascii_upper(_compact(normalize(raw)))
    if not value:
        raise _violation(field, "must not be empty")
    if len(value) != 9:
        raise _violation(field, "must be 9 characters (8 plus a check character)")
    if not _ORG_CODE.fullmatch(value):
        raise _violation(field, "must be 8 digits or upper-case letters followed by a digit or X")
    if _org_code_check_char(value[:8]) != value[8]:
        raise _violation(field, "check digit does not match")
    return value


def normalize_uscc_or_org_code(raw: str, field: str = "uscc") -> str:
    """Normalise a USCC (18 characters) or an organization code (9, GB 11714) or raise.

    Organisations registered before the USCC (2015) often know only their
    organization code, printed as `M000100Y-4`; privacy policy 一.5 accepts
    either. The result is a valid USCC or a valid 9-character code without
    hyphen; compare a code with a USCC through `org_code_of_uscc`.
    """
    value = _ascii_upper(_compact(normalize(raw)))
    if not value:
        raise _violation(field, "must not be empty")
    if len(value) == 9:
        return validate_org_code(value, field)
    if len(value) != 18:
        raise _violation(field, "must be an 18-character USCC or a 9-character organization code")
    return normalize_uscc(value, field)


def org_code_of_uscc(uscc: str) -> str:
    """The organization code inside a normalised USCC: characters 9-17 (GB 32100-2015)."""
    return uscc[8:17]


# --- Resident ID and other identity documents -------------------------------------


def _resident_id_check_char(body: str) -> str:
    """GB 11643-1999 check character of the first 17 digits."""
    total = sum(int(ch) * weight for ch, weight in zip(body, _RESIDENT_ID_WEIGHTS, strict=True))
    return _RESIDENT_ID_CHECK_CHARS[total % 11]


def _birth_date(value: str) -> date | None:
    """The birth date in characters 7-14 (YYYYMMDD), or None if no such day exists."""
    try:
        return date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return None


def normalize_resident_id(raw: str, field: str = "id_number", today: date | None = None) -> str:
    """Normalise and validate a resident ID number (GB 11643-1999) or raise InvalidArgument.

    `today` bounds the birth date; pass `today_in_china(clock)` from code that has
    a clock. Without it the current date in China Standard Time is used.
    """
    value = _ascii_upper(_compact(normalize(raw)))
    if not value:
        raise _violation(field, "must not be empty")
    if len(value) == 15:
        raise _violation(
            field, "must be 18 characters; 15-digit first-generation numbers are not accepted"
        )
    if len(value) != 18:
        raise _violation(field, "must be 18 characters")
    if not _RESIDENT_ID.fullmatch(value):
        raise _violation(field, "must be 17 digits followed by a digit or X")
    birth = _birth_date(value)
    if birth is None:
        raise _violation(field, "birth date (characters 7-14) is not a valid date")
    if birth.year < _MIN_BIRTH_YEAR:
        raise _violation(field, f"birth date (characters 7-14) is before {_MIN_BIRTH_YEAR}")
    current = today if today is not None else datetime.now(CHINA_TIMEZONE).date()
    if birth > current:
        raise _violation(field, "birth date (characters 7-14) is in the future")
    if _resident_id_check_char(value[:17]) != value[17]:
        raise _violation(field, "check digit does not match")
    return value


def resident_id_birth_date(value: str) -> date | None:
    """The birth date inside an 18-character resident ID number, or None if no such day."""
    return _birth_date(value) if len(value) == 18 and value[:14].isdigit() else None


def resident_id_check_matches(value: str) -> bool:
    """Whether an 18-character resident ID number's check character is right (GB 11643)."""
    return bool(_RESIDENT_ID.fullmatch(value)) and _resident_id_check_char(value[:17]) == value[17]


def uscc_check_matches(value: str) -> bool:
    """Whether a USCC's check character and its organisation code's are both right."""
    return _uscc_problem(value) is None


def org_code_check_matches(value: str) -> bool:
    """Whether a 9-character organisation code's check character is right (GB 11714)."""
    return bool(_ORG_CODE.fullmatch(value)) and _org_code_check_char(value[:8]) == value[8]


def _id_type(id_type: IdType | int | str, type_field: str) -> IdType:
    """Read an IdType from the enum, its number, or its name (with or without `ID_TYPE_`)."""
    try:
        if isinstance(id_type, str):
            name = id_type.strip().upper()
            if name.isdecimal():
                return IdType(int(name))
            return IdType[name.removeprefix("ID_TYPE_")]
        return IdType(id_type)
    except (KeyError, ValueError):
        raise _violation(type_field, "unknown identity document type") from None


def normalize_id_number(
    id_type: IdType | int | str,
    raw: str,
    field: str = "id_number",
    *,
    today: date | None = None,
    type_field: str = "id_type",
) -> str:
    """Normalise and validate an identity document number of the given type or raise.

    Resident ID cards get the full GB 11643 check; other documents only get the
    generic rule (5-20 ASCII letters and digits, upper-cased, separators dropped).
    """
    kind = _id_type(id_type, type_field)
    if kind is IdType.UNSPECIFIED:
        raise _violation(type_field, "must be specified")
    if kind is IdType.RESIDENT_ID_CARD:
        return normalize_resident_id(raw, field, today)
    value = _ascii_upper(_compact(normalize(raw)))
    if not value:
        raise _violation(field, "must not be empty")
    if not 5 <= len(value) <= 20:
        raise _violation(field, "must be 5-20 characters")
    if not _DOCUMENT_NUMBER.fullmatch(value):
        raise _violation(field, "must contain only letters and digits")
    return value


# --- Login name ------------------------------------------------------------------


def normalize_login_name(raw: str, field: str = "login_name") -> str:
    """Normalise and validate a login name (rules in the module docstring) or raise."""
    value = normalize(raw)
    if not value:
        raise _violation(field, "must not be empty")
    if not 4 <= len(value) <= 32:
        raise _violation(field, "must be 4-32 characters")
    if not (value[0].isascii() and value[0].isalpha()):
        raise _violation(field, "must start with an ASCII letter")
    if not _LOGIN_NAME_CHARS.fullmatch(value):
        raise _violation(
            field, "may contain only ASCII letters, digits, underscores, dots and hyphens"
        )
    value = value.lower()
    if classify(value) is not IdentifierKind.LOGIN_NAME:
        raise _violation(
            field,
            "must not have the shape of a phone number, USCC, ID number or email address",
        )
    return value


# --- Classification --------------------------------------------------------------


def classify(raw: str) -> IdentifierKind:
    """Tell the kind of a login identifier by its shape alone (never UNSPECIFIED).

    Rules, in order: an `@` means EMAIL; 17 digits plus a digit or `X` mean
    ID_NUMBER; 11 digits starting with 1, or digits after `+` or `00`, mean
    PHONE; 18 characters of the USCC alphabet mean USCC; anything else is a
    LOGIN_NAME. A USCC made only of digits (and perhaps a final `X`) has the
    shape of an ID number too; it is read as USCC only if its USCC check
    characters match and the ID check character does not, so the outcome does
    not depend on the date. Login names cannot collide: `normalize_login_name`
    refuses every name this function would read as another kind.
    """
    value = normalize(raw)
    if "@" in value:
        return IdentifierKind.EMAIL
    compact = _ascii_upper(_compact(value))
    if _RESIDENT_ID.fullmatch(compact):
        if _resident_id_check_char(compact[:17]) == compact[17]:
            return IdentifierKind.ID_NUMBER
        if _uscc_problem(compact) is None:
            return IdentifierKind.USCC
        return IdentifierKind.ID_NUMBER
    if _PHONE_SHAPE.fullmatch(compact):
        return IdentifierKind.PHONE
    if len(compact) == 18 and all(ch in USCC_ALPHABET for ch in compact):
        return IdentifierKind.USCC
    return IdentifierKind.LOGIN_NAME


def normalize_identifier(
    kind: IdentifierKind | int,
    raw: str,
    *,
    field: str = "identifier",
    kind_field: str = "identifier_kind",
    allowed_country_codes: Collection[str] = ("86",),
    today: date | None = None,
) -> tuple[IdentifierKind, str]:
    """Classify (if UNSPECIFIED) and normalise a login identifier; violations name `field`.

    ID_NUMBER means a resident ID number: other identity documents are not
    login identifiers.
    """
    try:
        resolved = IdentifierKind(kind)
    except ValueError:
        raise _violation(kind_field, "unknown identifier kind") from None
    if resolved is IdentifierKind.UNSPECIFIED:
        resolved = classify(raw)
    if resolved is IdentifierKind.PHONE:
        return resolved, normalize_phone(raw, field, allowed_country_codes)
    if resolved is IdentifierKind.EMAIL:
        return resolved, normalize_email(raw, field)
    if resolved is IdentifierKind.USCC:
        return resolved, normalize_uscc(raw, field)
    if resolved is IdentifierKind.ID_NUMBER:
        return resolved, normalize_resident_id(raw, field, today)
    return resolved, normalize_login_name(raw, field)


def normalize_identifier_or_none(
    kind: IdentifierKind | int,
    raw: str,
    *,
    allowed_country_codes: Collection[str] = ("86",),
    today: date | None = None,
) -> tuple[IdentifierKind, str] | None:
    """`normalize_identifier` for a lookup: None for an identifier that fails its kind's rules.

    Such an identifier cannot belong to any account; callers that must not say
    whether an account exists treat it as an unknown one, not as InvalidArgument.
    """
    try:
        return normalize_identifier(
            kind, raw, allowed_country_codes=allowed_country_codes, today=today
        )
    except InvalidArgument:
        return None


# --- Masking ---------------------------------------------------------------------

_MASK = "****"


def mask_phone(phone: str) -> str:
    """Mask a normalised phone for logs and views: `+8613812341234` → `138****1234`.

    Mainland numbers show the national form with the first 3 and last 4 digits,
    as Chinese services customarily do; other numbers show `+`, the country code
    and the last 4 digits. Anything unrecognised is masked completely.
    """
    if _MAINLAND_MOBILE.fullmatch(phone):
        national = phone
    elif phone.startswith("+86") and _MAINLAND_MOBILE.fullmatch(phone[3:]):
        national = phone[3:]
    else:
        digits = phone[1:] if phone.startswith("+") else ""
        code = _country_code(digits) if _DIGITS.fullmatch(digits) else None
        if code is None or len(digits) - len(code) < 6:
            return _MASK
        return f"+{code}{_MASK}{digits[-4:]}"
    return f"{national[:3]}{_MASK}{national[-4:]}"


def mask_email(email: str) -> str:
    """Mask an email address: `zhangsan@example.com` → `z***@example.com`.

    Only the first character of the local part is kept and the star count is
    fixed, so the length is not revealed; the domain stays readable.
    """
    local, at, domain = email.partition("@")
    if not at or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_id_number(id_number: str) -> str:
    """Mask an identity document number: `11010519491231002X` → `110*************2X`.

    Numbers of 15 characters or more keep the first 3 and last 2 characters
    (region prefix and check character, enough for a person to recognise their
    own); shorter ones keep the first and last; under 5 characters nothing is
    kept. One star per hidden character, so the kind of document stays visible.
    """
    length = len(id_number)
    if length >= 15:
        return id_number[:3] + "*" * (length - 5) + id_number[-2:]
    if length >= 5:
        return id_number[0] + "*" * (length - 2) + id_number[-1]
    return "*" * length


def mask_person_name(name: str) -> str:
    """Mask a person's name for a business system: `张三丰` → `张**`, `Li Na` → `L****`.

    The first character stays, as Chinese services customarily show (GB/T 35273
    examples); every other character becomes a star, spaces included, so a
    given name is never readable. An empty name stays empty.
    """
    if not name:
        return ""
    return name[0] + "*" * max(len(name) - 1, 1)


LOGIN_NAME_MASK_STARS = 6


def mask_login_name(login_name: str) -> str:
    """Mask a login name for the person recovering it: `zhang.wei` → `z******i`.

    The first and last characters stay, enough for a person to recognise their
    own; the star count is fixed, so the length is not revealed. A value of one
    character or none is masked completely.
    """
    stars = "*" * LOGIN_NAME_MASK_STARS
    if len(login_name) < 2:
        return stars
    return f"{login_name[0]}{stars}{login_name[-1]}"


def mask_identifier(kind: IdentifierKind | int, value: str) -> str:
    """Mask a normalised identifier of any kind for logs.

    A USCC is printed on every business licence and listed in the public
    register, so it is returned as is; a login name keeps its first two
    characters, since it is often built from a person's name.
    """
    if kind == IdentifierKind.PHONE:
        return mask_phone(value)
    if kind == IdentifierKind.EMAIL:
        return mask_email(value)
    if kind == IdentifierKind.ID_NUMBER:
        return mask_id_number(value)
    if kind == IdentifierKind.USCC:
        return value
    return value[:2] + "***" if len(value) > 2 else "***"
