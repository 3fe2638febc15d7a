"""Password policy: SECURITY.md P1 (length, NFKC) and P2 (common list, context words)."""

from __future__ import annotations

from importlib import resources

import pytest

from xiaohe.identity.server.credentials import passwords
from xiaohe.identity.server.credentials.passwords import (
    HAS_EMAIL,
    HAS_LOGIN_NAME,
    HAS_PHONE,
    HAS_PLATFORM_NAME,
    NOT_TEXT,
    TOO_COMMON,
    TOO_COMMON_VARIANT,
    CommonPasswords,
    PasswordPolicy,
)
from xiaohe.identity.server.errors import InvalidArgument

TOO_SHORT = "must be at least 8 characters"
TOO_LONG = "must be at most 128 characters"


@pytest.fixture(scope="module")
def common() -> CommonPasswords:
    return CommonPasswords.load()


@pytest.fixture
def policy(common: CommonPasswords) -> PasswordPolicy:
    return PasswordPolicy(common)


def refusal(policy: PasswordPolicy, password: str, context: tuple[str, ...] = ()) -> str:
    """Return the description of the single violation raised for `password`."""
    with pytest.raises(InvalidArgument) as caught:
        policy.check(password, context=context)
    assert len(caught.value.violations) == 1
    violation = caught.value.violations[0]
    assert violation.field == "password"
    # The message carries only the field and a fixed reason, never the password.
    assert caught.value.message == f"password: {violation.description}"
    return violation.description


# P1: length after NFKC, counted in code points, no truncation, no composition rules.


def test_seven_characters_are_too_short_and_eight_are_enough(policy: PasswordPolicy) -> None:
    """P1: seven characters are too short and eight are enough."""
    assert refusal(policy, "kq7#vz2") == TOO_SHORT
    assert policy.check("kq7#vz2m") == "kq7#vz2m"


def test_128_characters_are_accepted_and_129_refused(policy: PasswordPolicy) -> None:
    """P1: 128 characters are accepted and 129 refused."""
    longest = ("kq7#vz2m" * 16)[:127] + "x"
    assert len(longest) == 128
    assert policy.check(longest) == longest
    assert refusal(policy, longest + "y") == TOO_LONG


def test_nothing_is_truncated(policy: PasswordPolicy) -> None:
    """P1: nothing is truncated."""
    base = ("kq7#vz2m" * 16)[:127]
    assert policy.check(base + "a") != policy.check(base + "b")
    assert policy.check(base + "a")[-1] == "a"


def test_huge_input_is_refused_as_too_long(policy: PasswordPolicy) -> None:
    """P1: huge input is refused as too long."""
    assert refusal(policy, "kq7#vz2m" * 10_000) == TOO_LONG


def test_full_width_password_is_normalised(policy: PasswordPolicy) -> None:
    """P1: full width password is normalised."""
    assert policy.check("ｋｑ７＃ｖｚ２ｍ") == "kq7#vz2m"
    # 'ｐａｓｓｗｏｒｄ' is 'password' after NFKC, hence common.
    assert refusal(policy, "ｐａｓｓｗｏｒｄ") == TOO_COMMON


def test_combining_sequences_count_after_composition(policy: PasswordPolicy) -> None:
    """P1: combining sequences count after composition."""
    # e + U+0301 composes to one code point: 16 raw code points are 8 characters.
    eight = "e\u0301" * 8
    assert policy.check(eight) == "\u00e9" * 8
    assert refusal(policy, "e\u0301" * 7) == TOO_SHORT
    # q + U+0301 has no precomposed form, so it stays two code points.
    assert policy.check("q\u0301" * 4) == "q\u0301" * 4
    assert refusal(policy, "q\u0301" * 3 + "q") == TOO_SHORT


def test_compatibility_expansion_counts_after_nfkc(policy: PasswordPolicy) -> None:
    """P1: compatibility expansion counts after nfkc."""
    # U+FB01 (fi ligature) becomes "fi": 4 raw code points are 8 characters.
    assert policy.check("\ufb01" * 4) == "fi" * 4


def test_emoji_count_as_one_character_each(policy: PasswordPolicy) -> None:
    """P1: emoji count as one character each."""
    assert policy.check("😀" * 8) == "😀" * 8
    assert refusal(policy, "😀" * 7) == TOO_SHORT
    assert policy.check("🐼" * 128) == "🐼" * 128
    assert refusal(policy, "🐼" * 129) == TOO_LONG


def test_no_composition_rules(policy: PasswordPolicy) -> None:
    """P1: no composition rules."""
    assert policy.check("lowercaseonlyletters") == "lowercaseonlyletters"


def test_chinese_passphrase_is_accepted(policy: PasswordPolicy) -> None:
    """P1: chinese passphrase is accepted."""
    assert policy.check("春眠不觉晓处处闻啼鸟") == "春眠不觉晓处处闻啼鸟"


def test_lone_surrogate_is_refused(policy: PasswordPolicy) -> None:
    """P1: lone surrogate is refused."""
    assert refusal(policy, "kq7#vz2m\ud800") == NOT_TEXT


def test_bounds_must_be_consistent(common: CommonPasswords) -> None:
    """P1: bounds must be consistent."""
    with pytest.raises(ValueError, match="min_length"):
        PasswordPolicy(common, min_length=20, max_length=10)


# P2: the bundled common-password list.


def test_bundled_list_has_at_least_10000_lowercase_lines() -> None:
    """P2: bundled list has at least 10000 lowercase lines."""
    text = (
        resources.files(passwords.__package__)
        .joinpath("data", "common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    lines = text.splitlines()
    assert len(lines) >= 10_000
    assert all(line == line.lower() and line.strip() for line in lines)
    assert len(set(lines)) == len(lines)


def test_loaded_list_is_large_and_case_insensitive(common: CommonPasswords) -> None:
    """P2: loaded list is large and case insensitive."""
    assert len(common) >= 10_000
    for word in ("123456", "password", "woaini1314", "5201314", "qq123456", "zhangwei"):
        assert word in common
        assert word.upper() in common
    assert "kq7#vz2m" not in common
    assert 123456 not in common


def test_common_passwords_from_any_iterable() -> None:
    """P2: common passwords from any iterable."""
    small = CommonPasswords(["Hunter2", "", "ｐａｓｓ"])
    assert len(small) == 2
    assert "hunter2" in small
    assert "PASS" in small


@pytest.mark.parametrize(
    "password", ["password", "PassWord", "woaini1314", "1qaz2wsx", "zhangwei", "iloveyou"]
)
def test_common_passwords_are_refused(policy: PasswordPolicy, password: str) -> None:
    """P2: common passwords are refused."""
    assert refusal(policy, password) == TOO_COMMON


def test_123456_is_refused(common: CommonPasswords, policy: PasswordPolicy) -> None:
    """P2: 123456 is refused."""
    assert refusal(policy, "123456") == TOO_SHORT
    lenient = PasswordPolicy(common, min_length=1)
    assert refusal(lenient, "123456") == TOO_COMMON


@pytest.mark.parametrize(
    "password", ["dragon2024", "Sunflower99!", "monkey!!!!", "love2024", "iloveyou 1"]
)
def test_common_password_with_short_suffix_is_refused(
    policy: PasswordPolicy, password: str
) -> None:
    """P2: common password with short suffix is refused."""
    assert refusal(policy, password) == TOO_COMMON_VARIANT


@pytest.mark.parametrize(
    "password", ["dragon123456789", "2024dragon", "dragonfly-kq7", "monkey#1!x"]
)
def test_other_manglings_of_common_passwords_are_accepted(
    policy: PasswordPolicy, password: str
) -> None:
    """P2: other manglings of common passwords are accepted."""
    assert policy.check(password) == password


# P2: context words.


@pytest.mark.parametrize(
    "password", ["xiaohe2024!", "My-Xiao.He-pass", "我爱小禾企服123", "XHQF-kq7#vz2m"]
)
def test_platform_name_is_refused(policy: PasswordPolicy, password: str) -> None:
    """P2: platform name is refused."""
    assert refusal(policy, password) == HAS_PLATFORM_NAME


@pytest.mark.parametrize("password", ["ChenXiaoming!7", "kq7#chen_xiaoming", "chen.xiao.ming.9"])
def test_login_name_is_refused(policy: PasswordPolicy, password: str) -> None:
    """P2: login name is refused."""
    assert refusal(policy, password, ("chen.xiaoming",)) == HAS_LOGIN_NAME


def test_short_context_words_are_ignored(policy: PasswordPolicy) -> None:
    """P2: short context words are ignored."""
    assert policy.check("bob-kq7#vz2m", context=("bob",)) == "bob-kq7#vz2m"


def test_email_local_part_is_refused(policy: PasswordPolicy) -> None:
    """P2: email local part is refused."""
    assert refusal(policy, "chenxm-kq7#vz2m", ("Chen.XM@example.com",)) == HAS_EMAIL
    assert policy.check("example-kq7#vz2m", context=("chen.xm@example.com",))


@pytest.mark.parametrize(
    "password", ["kq7#13812345678", "+8613812345678z", "kq7-1234-5678#", "１２３４５６７８kq7#"]
)
def test_phone_digits_are_refused(policy: PasswordPolicy, password: str) -> None:
    """P2: phone digits are refused."""
    assert refusal(policy, password, ("+86 138-1234-5678",)) == HAS_PHONE


def test_last_four_phone_digits_alone_are_allowed(policy: PasswordPolicy) -> None:
    """P2: last four phone digits alone are allowed."""
    assert policy.check("kq7#vz-5678", context=("+8613812345678",)) == "kq7#vz-5678"


def test_violation_is_reported_on_the_given_field(policy: PasswordPolicy) -> None:
    """P2: violation is reported on the given field."""
    with pytest.raises(InvalidArgument) as caught:
        policy.check("short", field="new_password")
    assert caught.value.violations[0].field == "new_password"
    assert caught.value.violations[0].description == TOO_SHORT


def test_accepted_password_is_returned_normalised(policy: PasswordPolicy) -> None:
    """P2: accepted password is returned normalised."""
    context = ("chen.xiaoming", "+8613812345678", "chen@example.com")
    assert policy.check("Ｔｒｉｃｋｙ kettle 42", context=context) == "Tricky kettle 42"
