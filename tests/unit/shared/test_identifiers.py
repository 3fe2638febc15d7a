"""Unit tests of identifier normalisation, validation, classification and masking."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import pytest

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.shared.identifiers import (
    USCC_ALPHABET,
    IdentifierKind,
    IdType,
    classify,
    mask_email,
    mask_id_number,
    mask_identifier,
    mask_login_name,
    mask_phone,
    normalize,
    normalize_email,
    normalize_id_number,
    normalize_identifier,
    normalize_login_name,
    normalize_phone,
    normalize_resident_id,
    normalize_uscc,
    normalize_uscc_or_org_code,
    number_prefix,
    org_code_of_uscc,
    today_in_china,
    validate_org_code,
)

TODAY = date(2025, 6, 1)

# Vectors from SECURITY.md.
USCC_VECTORS = ("91350100M000100Y43", "91310110666007217T")
RESIDENT_ID_VECTORS = ("11010519491231002X", "440524188001010014")

# The first vector with its organization code check character changed from 4
# to 5 and the outer GB 32100 check character recomputed (3 → 6): the outer
# check holds, the inner one does not.
USCC_BAD_ORG_CODE = "91350100M000100Y56"
# A USCC made only of digits, valid by both of its checks; its GB 11643 check
# character would be different, so it cannot be read as a resident ID.
USCC_ALL_DIGITS = "913101100010000535"


def _resident_id(body17: str) -> str:
    """Append the GB 11643-1999 check character (independent of the module under test)."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(ch) * w for ch, w in zip(body17, weights, strict=True))
    return body17 + "10X98765432"[total % 11]


def _violation(call: Callable[[], object]) -> FieldViolation:
    """Run `call`, expect InvalidArgument with exactly one violation and return it."""
    with pytest.raises(InvalidArgument) as excinfo:
        call()
    assert len(excinfo.value.violations) == 1
    return excinfo.value.violations[0]


def _wrong_last_chars(value: str, alphabet: str) -> list[str]:
    """Every variant of `value` with the last character replaced by another one of `alphabet`."""
    return [value[:-1] + ch for ch in alphabet if ch != value[-1]]


# --- normalize -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("１３８１２３４５６７８", "13812345678"),
        ("ＡＢＣｘｙｚ", "ABCxyz"),
        ("\u3000 abc \t\n", "abc"),
        ("ab\u200bc\ufeff", "abc"),
        ("＋８６", "+86"),
        ("ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ", "zhang@example.com"),
        ("a b", "a b"),
    ],
)
def test_normalize_folds_width_drops_invisible_and_trims(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


# --- Phone -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "13812345678",
        " 138 1234 5678 ",
        "138-1234-5678",
        "+8613812345678",
        "+86 138 1234 5678",
        "+86-138-1234-5678",
        "008613812345678",
        "0086 138-1234-5678",
        "１３８１２３４５６７８",
        "＋８６　１３８　１２３４　５６７８",
        "００８６１３８１２３４５６７８",
        "138\u20141234\u20145678",
    ],
)
def test_phone_spellings_normalise_to_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+8613812345678"


@pytest.mark.parametrize("second_digit", "3456789")
def test_phone_accepts_every_mobile_second_digit(second_digit: str) -> None:
    assert normalize_phone(f"1{second_digit}012345678") == f"+861{second_digit}012345678"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("12812345678", "11-digit mainland mobile number"),
        ("10812345678", "11-digit mainland mobile number"),
        ("1381234567", "11-digit mainland mobile number"),
        ("138123456789", "11-digit mainland mobile number"),
        ("8613812345678", "11-digit mainland mobile number"),
        ("23812345678", "11-digit mainland mobile number"),
        ("+86 128 1234 5678", "a +86 number must be an 11-digit mainland mobile"),
        ("+86 0138 1234 5678", "a +86 number must be an 11-digit mainland mobile"),
        ("+86 138 1234 567", "a +86 number must be an 11-digit mainland mobile"),
        ("138-1234-567a", "must contain only digits"),
        ("(138) 1234 5678", "must contain only digits"),
        ("+", "must contain only digits"),
        ("+86 138.1234.5678", "must contain only digits"),
        ("+0 138 1234 5678", "country code is missing or invalid"),
        ("+1 415 555 0100", "country code +1 is not allowed"),
        ("+7 912 345 6789", "country code +7 is not allowed"),
        ("+852 9123 4567", "country code +852 is not allowed"),
        ("00852 9123 4567", "country code +852 is not allowed"),
        ("+44 7700 900123", "country code +44 is not allowed"),
        ("+886 912 345 678", "country code +886 is not allowed"),
    ],
)
def test_phone_rejections_name_the_field_and_reason(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_phone(raw))
    assert violation.field == "phone"
    assert fragment in violation.description


def test_phone_violation_uses_the_given_field() -> None:
    violation = _violation(lambda: normalize_phone("12345", field="new_phone"))
    assert violation.field == "new_phone"


def test_phone_other_allowed_country_codes_get_the_e164_rule() -> None:
    allowed = ("86", "852")
    assert normalize_phone("+852 9123 4567", allowed_country_codes=allowed) == "+85291234567"
    assert normalize_phone("13812345678", allowed_country_codes=allowed) == "+8613812345678"
    too_short = _violation(lambda: normalize_phone("+852 123", allowed_country_codes=allowed))
    assert "at most 15 digits" in too_short.description
    too_long = _violation(
        lambda: normalize_phone("+852 1234 5678 9012 3", allowed_country_codes=allowed)
    )
    assert "at most 15 digits" in too_long.description


def test_phone_without_prefix_needs_86_allowed() -> None:
    violation = _violation(lambda: normalize_phone("13812345678", allowed_country_codes=("852",)))
    assert violation == FieldViolation("phone", "country code +86 is not allowed")


# --- Email -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("zhangsan@example.com", "zhangsan@example.com"),
        ("  ZhangSan@Example.COM ", "zhangsan@example.com"),
        ("ｚｈａｎｇｓａｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "zhangsan@example.com"),
        ("First.Last+Tag@Mail.Sub.Example.CN", "first.last+tag@mail.sub.example.cn"),
        ("a@b.co", "a@b.co"),
        ("o'brien-x_y@ex-ample.org", "o'brien-x_y@ex-ample.org"),
        ("user@xn--fiqs8s.xn--fiqs8s", "user@xn--fiqs8s.xn--fiqs8s"),
        ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
    ],
)
def test_email_normalises_to_lower_case(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("zhangsan", "exactly one @"),
        ("zhang@san@example.com", "exactly one @"),
        ("@example.com", "before @ must not be empty"),
        ("x" * 65 + "@example.com", "at most 64 characters"),
        ("a@" + ".".join(["b" * 63] * 4), "at most 254 characters"),
        (".zhang@example.com", "single dots"),
        ("zhang.@example.com", "single dots"),
        ("zhang..san@example.com", "single dots"),
        ("zhang san@example.com", "may contain only ASCII"),
        ('"zhang"@example.com', "may contain only ASCII"),
        ("张三@example.com", "may contain only ASCII"),
        ("zhangsan@例子.中国", "internationalized domain names"),
        ("zhangsan@localhost", "at least two labels"),
        ("zhangsan@", "at least two labels"),
        ("zhangsan@example.com.", "each domain label"),
        ("zhangsan@example..com", "each domain label"),
        ("zhangsan@-example.com", "each domain label"),
        ("zhangsan@example-.com", "each domain label"),
        ("zhangsan@exa_mple.com", "each domain label"),
        ("zhangsan@" + "a" * 64 + ".com", "each domain label"),
        ("zhangsan@example.c0m", "top-level domain"),
        ("zhangsan@example.c", "top-level domain"),
        ("zhangsan@example.123", "top-level domain"),
    ],
)
def test_email_rejections_name_the_field_and_reason(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_email(raw))
    assert violation.field == "email"
    assert fragment in violation.description


def test_email_violation_uses_the_given_field() -> None:
    assert _violation(lambda: normalize_email("nope", field="new_email")).field == "new_email"


# --- USCC and organization code -------------------------------------------------------


@pytest.mark.parametrize("vector", USCC_VECTORS)
def test_uscc_vectors_are_valid(vector: str) -> None:
    assert normalize_uscc(vector) == vector


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("91350100m000100y43", "91350100M000100Y43"),
        ("９１３１０１１０６６６００７２１７ｔ", "91310110666007217T"),
        (" 9131 0110 6660 0721 7T ", "91310110666007217T"),
        (USCC_ALL_DIGITS, USCC_ALL_DIGITS),
    ],
)
def test_uscc_normalises_case_width_and_spaces(raw: str, expected: str) -> None:
    assert normalize_uscc(raw) == expected


@pytest.mark.parametrize(
    "wrong", [w for v in USCC_VECTORS for w in _wrong_last_chars(v, USCC_ALPHABET)]
)
def test_uscc_every_wrong_check_character_is_rejected(wrong: str) -> None:
    assert _violation(lambda: normalize_uscc(wrong)) == FieldViolation(
        "uscc", "check digit does not match"
    )


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("91350100M000100Y4", "must be exactly 18 characters"),
        ("91350100M000100Y433", "must be exactly 18 characters"),
        ("91350100M000100I43", "invalid characters"),
        ("91350100M000100O43", "invalid characters"),
        ("91350100M000100Z43", "invalid characters"),
        ("91350100M000100Y4*", "invalid characters"),
        ("91A50100M000100Y43", "administrative division code"),
        (USCC_BAD_ORG_CODE, "organization code check digit (character 17) does not match"),
    ],
)
def test_uscc_rejections_name_the_field_and_reason(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_uscc(raw))
    assert violation.field == "uscc"
    assert fragment in violation.description


def test_uscc_violation_uses_the_given_field() -> None:
    assert _violation(lambda: normalize_uscc("1", field="legal.uscc")).field == "legal.uscc"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("M000100Y4", "M000100Y4"),
        ("M000100Y-4", "M000100Y4"),
        ("m000100y-4", "M000100Y4"),
        ("666007217", "666007217"),
        ("66600721-7", "666007217"),
        ("ｍ０００１００ｙ－４", "M000100Y4"),
        ("10000018X", "10000018X"),
        ("10000018-x", "10000018X"),
        ("100000040", "100000040"),
    ],
)
def test_org_code_valid(raw: str, expected: str) -> None:
    assert validate_org_code(raw) == expected


@pytest.mark.parametrize("vector", USCC_VECTORS)
def test_org_code_of_each_uscc_vector_is_valid(vector: str) -> None:
    assert validate_org_code(vector[8:17]) == vector[8:17]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("M000100Y", "must be 9 characters"),
        ("M000100Y45", "must be 9 characters"),
        ("M00010*Y4", "must be 8 digits or upper-case letters"),
        ("M000100YA", "must be 8 digits or upper-case letters"),
        ("M000100Y5", "check digit does not match"),
        ("10000018-0", "check digit does not match"),
        ("100000041", "check digit does not match"),
    ],
)
def test_org_code_rejections(raw: str, fragment: str) -> None:
    violation = _violation(lambda: validate_org_code(raw))
    assert violation.field == "org_code"
    assert fragment in violation.description


@pytest.mark.parametrize(
    ("vector", "org_code"),
    [("91350100M000100Y43", "M000100Y4"), ("91310110666007217T", "666007217")],
)
def test_org_code_of_uscc_is_characters_9_to_17(vector: str, org_code: str) -> None:
    assert org_code_of_uscc(vector) == org_code
    assert validate_org_code(org_code) == org_code


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("91350100M000100Y43", "91350100M000100Y43"),
        (" 91350100m000100y43 ", "91350100M000100Y43"),
        ("９１３５０１００Ｍ０００１００Ｙ４３", "91350100M000100Y43"),
        ("M000100Y4", "M000100Y4"),
        ("m000100y-4", "M000100Y4"),
        ("ｍ０００１００ｙ－４", "M000100Y4"),
        ("66600721-7", "666007217"),
    ],
)
def test_uscc_or_org_code_accepts_either(raw: str, expected: str) -> None:
    assert normalize_uscc_or_org_code(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("M000100Y", "18-character USCC or a 9-character organization code"),
        ("91350100M000100Y4", "18-character USCC or a 9-character organization code"),
        ("M000100Y5", "check digit does not match"),
        ("91350100M000100Y44", "check digit does not match"),
        (USCC_BAD_ORG_CODE, "organization code check digit"),
    ],
)
def test_uscc_or_org_code_rejections_name_the_field(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_uscc_or_org_code(raw, "legal_person.uscc"))
    assert violation.field == "legal_person.uscc"
    assert fragment in violation.description
    assert not raw or raw not in violation.description


# --- Resident ID -----------------------------------------------------------------


@pytest.mark.parametrize("vector", RESIDENT_ID_VECTORS)
def test_resident_id_vectors_are_valid(vector: str) -> None:
    assert normalize_resident_id(vector, today=TODAY) == vector


@pytest.mark.parametrize("vector", RESIDENT_ID_VECTORS)
def test_resident_id_vectors_are_valid_against_the_real_date(vector: str) -> None:
    assert normalize_resident_id(vector) == vector


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("11010519491231002x", "11010519491231002X"),
        ("１１０１０５１９４９１２３１００２ｘ", "11010519491231002X"),
        ("１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X"),
        (" 110105 19491231 002X ", "11010519491231002X"),
        (_resident_id("11010520000229002"), _resident_id("11010520000229002")),
        (_resident_id("11010518500101002"), _resident_id("11010518500101002")),
    ],
)
def test_resident_id_normalises_x_width_and_spaces(raw: str, expected: str) -> None:
    assert normalize_resident_id(raw, today=TODAY) == expected


@pytest.mark.parametrize(
    "wrong",
    [w for v in RESIDENT_ID_VECTORS for w in _wrong_last_chars(v, "0123456789X")],
)
def test_resident_id_every_wrong_check_character_is_rejected(wrong: str) -> None:
    assert _violation(lambda: normalize_resident_id(wrong, today=TODAY)) == FieldViolation(
        "id_number", "check digit does not match"
    )


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("110105491231002", "15-digit first-generation numbers are not accepted"),
        ("11010519491231002", "must be 18 characters"),
        ("11010519491231002X1", "must be 18 characters"),
        ("1101051949123100XX", "17 digits followed by a digit or X"),
        ("11010519491231002A", "17 digits followed by a digit or X"),
        ("A1010519491231002X", "17 digits followed by a digit or X"),
        (_resident_id("11010519490230002"), "is not a valid date"),
        (_resident_id("11010519000229002"), "is not a valid date"),
        (_resident_id("11010519491301002"), "is not a valid date"),
        (_resident_id("11010519490000002"), "is not a valid date"),
        (_resident_id("11010518491231002"), "is before 1850"),
        (_resident_id("11010520990101002"), "is in the future"),
    ],
)
def test_resident_id_rejections_name_the_field_and_reason(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_resident_id(raw, today=TODAY))
    assert violation.field == "id_number"
    assert fragment in violation.description


def test_resident_id_birth_today_is_valid_and_tomorrow_is_not() -> None:
    born_today = _resident_id("110105" + TODAY.strftime("%Y%m%d") + "002")
    assert normalize_resident_id(born_today, today=TODAY) == born_today
    tomorrow = TODAY + timedelta(days=1)
    born_tomorrow = _resident_id("110105" + tomorrow.strftime("%Y%m%d") + "002")
    violation = _violation(lambda: normalize_resident_id(born_tomorrow, today=TODAY))
    assert violation == FieldViolation("id_number", "birth date (characters 7-14) is in the future")


def test_resident_id_violation_uses_the_given_field() -> None:
    violation = _violation(lambda: normalize_resident_id("1", field="representative.id_number"))
    assert violation.field == "representative.id_number"


def test_today_in_china_is_utc_plus_8() -> None:
    # 2024-12-31T16:30:00Z is 2025-01-01 00:30 in Beijing.
    assert today_in_china(FakeClock(1_735_662_600.0)) == date(2025, 1, 1)
    assert today_in_china(FakeClock(1_735_662_600.0 - 3600)) == date(2024, 12, 31)


# --- Other identity documents -------------------------------------------------------


@pytest.mark.parametrize(
    "id_type", [IdType.RESIDENT_ID_CARD, 1, "RESIDENT_ID_CARD", "ID_TYPE_RESIDENT_ID_CARD", "1"]
)
def test_id_number_resident_card_gets_the_full_check(id_type: IdType | int | str) -> None:
    assert normalize_id_number(id_type, "11010519491231002x", today=TODAY) == "11010519491231002X"
    violation = _violation(lambda: normalize_id_number(id_type, "110105194912310021", today=TODAY))
    assert violation == FieldViolation("id_number", "check digit does not match")


@pytest.mark.parametrize(
    ("id_type", "raw", "expected"),
    [
        (IdType.PASSPORT, "e1234 5678", "E12345678"),
        (IdType.PASSPORT, "ｅ１２３４５６７８", "E12345678"),
        (IdType.PASSPORT, "E-1234-5678", "E12345678"),
        (IdType.HK_MACAO_PERMIT, "H12345678", "H12345678"),
        (IdType.TAIWAN_PERMIT, "12345678", "12345678"),
        (IdType.FOREIGN_PERMANENT_RESIDENT, "usa123456789012", "USA123456789012"),
        (IdType.PASSPORT, "A1234", "A1234"),
        (IdType.PASSPORT, "A" * 20, "A" * 20),
    ],
)
def test_id_number_other_documents(id_type: IdType, raw: str, expected: str) -> None:
    assert normalize_id_number(id_type, raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("E123", "must be 5-20 characters"),
        ("E" * 21, "must be 5-20 characters"),
        ("E1234#5678", "only letters and digits"),
        ("\u041512345678", "only letters and digits"),  # Cyrillic Е
        ("E1234_5678", "only letters and digits"),
    ],
)
def test_id_number_other_document_rejections(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_id_number(IdType.PASSPORT, raw))
    assert violation.field == "id_number"
    assert fragment in violation.description


@pytest.mark.parametrize(
    ("id_type", "description"),
    [
        (IdType.UNSPECIFIED, "must be specified"),
        (0, "must be specified"),
        (99, "unknown identity document type"),
        ("DRIVING_LICENCE", "unknown identity document type"),
        ("42", "unknown identity document type"),
    ],
)
def test_id_number_type_must_be_known(id_type: IdType | int | str, description: str) -> None:
    violation = _violation(lambda: normalize_id_number(id_type, "E12345678"))
    assert violation == FieldViolation("id_type", description)
    custom = _violation(
        lambda: normalize_id_number(id_type, "E12345678", type_field="representative.id_type")
    )
    assert custom.field == "representative.id_type"


# --- Login name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("zhang_san", "zhang_san"),
        ("ZhangSan", "zhangsan"),
        ("  ZhangSan  ", "zhangsan"),
        ("ｚｈａｎｇｓａｎ", "zhangsan"),
        ("a.b-c_1", "a.b-c_1"),
        ("abcd", "abcd"),
        ("a" * 32, "a" * 32),
        ("abcdefghjklmnpqrti", "abcdefghjklmnpqrti"),  # 18 chars, but `i` is not in USCC
        ("abcdefghjklmnpqrt", "abcdefghjklmnpqrt"),  # 17 USCC-alphabet chars
        ("abcdefghjklmnpqrtuw", "abcdefghjklmnpqrtuw"),  # 19 USCC-alphabet chars
    ],
)
def test_login_name_valid(raw: str, expected: str) -> None:
    assert normalize_login_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "must not be empty"),
        ("abc", "must be 4-32 characters"),
        ("a" * 33, "must be 4-32 characters"),
        ("1abc", "must start with an ASCII letter"),
        ("_abc", "must start with an ASCII letter"),
        (".abc", "must start with an ASCII letter"),
        ("张三abcd", "must start with an ASCII letter"),
        ("13812345678", "must start with an ASCII letter"),
        ("+8613812345678", "must start with an ASCII letter"),
        ("abc张三", "may contain only ASCII letters"),
        ("straße", "may contain only ASCII letters"),
        ("zhang san", "may contain only ASCII letters"),
        ("zhang@san.com", "may contain only ASCII letters"),
        ("zhang+san", "may contain only ASCII letters"),
        ("abcdefghjklmnpqrtu", "must not have the shape of"),
        ("ABCDEFGHJKLMNPQRTU", "must not have the shape of"),
        ("Y1310110666007217T", "must not have the shape of"),
    ],
)
def test_login_name_rejections_name_the_field_and_reason(raw: str, fragment: str) -> None:
    violation = _violation(lambda: normalize_login_name(raw))
    assert violation.field == "login_name"
    assert fragment in violation.description


# --- Classification ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("zhangsan@example.com", IdentifierKind.EMAIL),
        ("ｚｈａｎｇｓａｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", IdentifierKind.EMAIL),
        ("not an email @", IdentifierKind.EMAIL),
        ("13812345678", IdentifierKind.PHONE),
        ("138 1234 5678", IdentifierKind.PHONE),
        ("１３８１２３４５６７８", IdentifierKind.PHONE),
        ("12812345678", IdentifierKind.PHONE),
        ("+86 138-1234-5678", IdentifierKind.PHONE),
        ("008613812345678", IdentifierKind.PHONE),
        ("+852 9123 4567", IdentifierKind.PHONE),
        ("11010519491231002X", IdentifierKind.ID_NUMBER),
        ("11010519491231002x", IdentifierKind.ID_NUMBER),
        ("440524188001010014", IdentifierKind.ID_NUMBER),
        ("110105194912310021", IdentifierKind.ID_NUMBER),  # wrong check: still an ID shape
        ("91350100M000100Y43", IdentifierKind.USCC),
        ("91350100m000100y43", IdentifierKind.USCC),
        ("91310110666007217T", IdentifierKind.USCC),
        ("91310110666007217A", IdentifierKind.USCC),  # wrong check: still a USCC shape
        (USCC_ALL_DIGITS, IdentifierKind.USCC),
        ("913101100010000536", IdentifierKind.ID_NUMBER),  # all digits, neither check holds
        ("zhang_san", IdentifierKind.LOGIN_NAME),
        ("abcdefghjklmnpqrti", IdentifierKind.LOGIN_NAME),
        ("1381234567", IdentifierKind.LOGIN_NAME),
        ("", IdentifierKind.LOGIN_NAME),
    ],
)
def test_classify_by_shape(raw: str, kind: IdentifierKind) -> None:
    assert classify(raw) is kind


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        (" ZhangSan ", IdentifierKind.LOGIN_NAME, "zhangsan"),
        ("+86 138 1234 5678", IdentifierKind.PHONE, "+8613812345678"),
        ("ZhangSan@Example.com", IdentifierKind.EMAIL, "zhangsan@example.com"),
        ("91350100m000100y43", IdentifierKind.USCC, "91350100M000100Y43"),
        ("11010519491231002x", IdentifierKind.ID_NUMBER, "11010519491231002X"),
        (USCC_ALL_DIGITS, IdentifierKind.USCC, USCC_ALL_DIGITS),
    ],
)
def test_normalize_identifier_classifies_when_unspecified(
    raw: str, kind: IdentifierKind, value: str
) -> None:
    assert normalize_identifier(IdentifierKind.UNSPECIFIED, raw, today=TODAY) == (kind, value)
    assert normalize_identifier(0, raw, today=TODAY) == (kind, value)
    assert normalize_identifier(kind, raw, today=TODAY) == (kind, value)


@pytest.mark.parametrize(
    ("kind", "raw", "fragment"),
    [
        (IdentifierKind.UNSPECIFIED, "12812345678", "11-digit mainland mobile"),
        (IdentifierKind.UNSPECIFIED, "+852 9123 4567", "country code +852 is not allowed"),
        (IdentifierKind.UNSPECIFIED, "zhang@", "at least two labels"),
        (IdentifierKind.UNSPECIFIED, "110105194912310021", "check digit does not match"),
        (IdentifierKind.UNSPECIFIED, "91310110666007217A", "check digit does not match"),
        (IdentifierKind.UNSPECIFIED, "ab", "must be 4-32 characters"),
        (IdentifierKind.LOGIN_NAME, "13812345678", "must start with an ASCII letter"),
        (IdentifierKind.PHONE, "zhangsan", "must contain only digits"),
        (IdentifierKind.ID_NUMBER, "E12345678", "must be 18 characters"),
    ],
)
def test_normalize_identifier_violations_name_identifier(
    kind: IdentifierKind, raw: str, fragment: str
) -> None:
    violation = _violation(lambda: normalize_identifier(kind, raw, today=TODAY))
    assert violation.field == "identifier"
    assert fragment in violation.description


def test_normalize_identifier_passes_allowed_country_codes() -> None:
    assert normalize_identifier(
        IdentifierKind.UNSPECIFIED, "+852 9123 4567", allowed_country_codes=("86", "852")
    ) == (IdentifierKind.PHONE, "+85291234567")


def test_normalize_identifier_rejects_unknown_kind() -> None:
    violation = _violation(lambda: normalize_identifier(9, "zhangsan"))
    assert violation == FieldViolation("identifier_kind", "unknown identifier kind")


@pytest.mark.parametrize(
    ("call", "secret"),
    [
        (lambda: normalize_phone("+86 128 1234 5678"), "12812345678"),
        (lambda: normalize_resident_id("110105194912310021", today=TODAY), "110105194912310021"),
        (lambda: normalize_email("zhang..san@example.com"), "zhang..san"),
        (lambda: normalize_uscc("91310110666007217A"), "91310110666007217A"),
        (lambda: normalize_login_name("zhangsan 1990"), "zhangsan"),
    ],
)
def test_violations_never_repeat_the_value(call: Callable[[], object], secret: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        call()
    assert secret not in str(excinfo.value)
    assert all(secret not in v.description for v in excinfo.value.violations)


# --- Masking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+8613812341234", "138****1234"),
        ("13812341234", "138****1234"),
        ("+85291234567", "+852****4567"),
        ("+14155550100", "+1****0100"),
        ("+8612", "****"),
        ("not a phone", "****"),
        ("", "****"),
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("zhangsan@example.com", "z***@example.com"),
        ("a@example.com", "a***@example.com"),
        ("nope", "***"),
        ("@example.com", "***"),
        ("zhangsan@", "***"),
    ],
)
def test_mask_email(email: str, masked: str) -> None:
    assert mask_email(email) == masked


@pytest.mark.parametrize(
    ("id_number", "masked"),
    [
        ("11010519491231002X", "110*************2X"),
        ("440524188001010014", "440*************14"),
        ("USA123456789012", "USA**********12"),
        ("E12345678", "E*******8"),
        ("A1234", "A***4"),
        ("1234", "****"),
    ],
)
def test_mask_id_number(id_number: str, masked: str) -> None:
    assert mask_id_number(id_number) == masked
    assert len(masked) == len(id_number)


@pytest.mark.parametrize(
    ("login_name", "masked"),
    [
        ("zhang.wei", "z******i"),
        ("abcd", "a******d"),
        ("fuzhou-tech-2024-holdings-limited", "f******d"),
        ("a", "******"),
        ("", "******"),
    ],
)
def test_mask_login_name(login_name: str, masked: str) -> None:
    assert mask_login_name(login_name) == masked


def test_mask_login_name_hides_the_length() -> None:
    assert len({len(mask_login_name(name)) for name in ("abcd", "zhang.wei", "x" * 32)}) == 1


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        (IdentifierKind.PHONE, "+8613812341234", "138****1234"),
        (IdentifierKind.EMAIL, "zhangsan@example.com", "z***@example.com"),
        (IdentifierKind.ID_NUMBER, "11010519491231002X", "110*************2X"),
        (IdentifierKind.USCC, "91350100M000100Y43", "91350100M000100Y43"),
        (IdentifierKind.LOGIN_NAME, "zhangsan", "zh***"),
        (IdentifierKind.LOGIN_NAME, "ab", "***"),
        (2, "+8613812341234", "138****1234"),
    ],
)
def test_mask_identifier(kind: IdentifierKind | int, value: str, masked: str) -> None:
    assert mask_identifier(kind, value) == masked


@pytest.mark.parametrize(
    ("phone", "prefix"),
    [
        ("+8613812345678", "86-1381234"),
        ("+85291234567", "852-9123"),  # eight national digits: four kept, four left out
        ("+12025550123", "1-202555"),
        ("+4930123456789", "49-3012345"),  # at most seven national digits
        ("+3541234", ""),  # four national digits: nothing left to keep
        ("13812345678", ""),  # not normalised
        ("", ""),
    ],
)
def test_number_prefix_names_ten_thousand_numbers_or_more(phone: str, prefix: str) -> None:
    assert number_prefix(phone) == prefix
