"""Number ranges, prefixes and the pumping settings (SECURITY X3): parsing and validation."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import Settings, SettingsError, load_settings
from xiaohe.identity.server.container import pumping_policy
from xiaohe.identity.server.ratelimit.prefixes import NumberRange, PumpingPolicy, parse_ranges


def test_ranges_parse_and_match_by_leading_digits() -> None:
    r = NumberRange.parse("+86-170")
    assert str(r) == "86-170"
    assert r.contains("8617001234567")
    assert not r.contains("8617101234567")
    assert not r.contains("8517001234567")
    assert NumberRange.parse("852").contains("85291234567")
    assert parse_ranges(["86-170", "86-170", "86-171"]) == (
        NumberRange("86", "170"),
        NumberRange("86", "171"),
    )
    for bad in ("", "86-", "086-170", "86 170", "1234-5", "86-17a"):
        with pytest.raises(ValueError, match="not a number range"):
            NumberRange.parse(bad)


def test_a_scope_names_the_prefix_and_the_ranges_never_the_number() -> None:
    policy = PumpingPolicy(
        denied=parse_ranges(["86-1700"]), budgeted=parse_ranges(["86-17", "86-170"])
    )
    scope = policy.scope("+8617001234567")
    assert scope is not None
    assert scope.prefix == "86-1700123"
    assert scope.ranges == ("86-17", "86-170")
    assert scope.denied
    other = policy.scope("+8613812345678")
    assert other is not None
    assert (other.prefix, other.ranges, other.denied) == ("86-1381234", (), False)
    iceland = policy.scope("+3541234567")  # seven national digits: three kept
    assert iceland is not None
    assert iceland.prefix == "354-123"
    short = policy.scope("+3541234")  # four national digits: no country split, still 10,000
    assert short is not None
    assert short.prefix == "x-354"
    assert policy.scope("zhangsan@example.cn") is None


def test_settings_defaults_make_the_documented_policy() -> None:
    policy = pumping_policy(Settings())
    assert policy == PumpingPolicy()
    assert [str(r) for r in policy.budgeted] == ["86-162", "86-165", "86-167", "86-170", "86-171"]
    assert (policy.watch_window, policy.watch_min_sent, policy.watch_min_ratio) == (3600, 20, 0.2)
    assert policy.block_seconds == 12 * 3600


def test_settings_from_the_environment() -> None:
    loaded = load_settings(
        {
            "XIAOHE_IDENTITY_PUMPING_DENIED_RANGES": "+86-1700, 852",
            "XIAOHE_IDENTITY_PUMPING_BUDGETED_RANGES": "",
            "XIAOHE_IDENTITY_PUMPING_MIN_RATIO": "0.5",
        }
    )
    policy = pumping_policy(loaded)
    assert [str(r) for r in policy.denied] == ["86-1700", "852"]
    assert policy.budgeted == ()
    assert policy.watch_min_ratio == 0.5


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PUMPING_DENIED_RANGES", "86 170", "is not a number range"),
        ("PUMPING_BUDGETED_RANGES", "86-17x", "is not a number range"),
        ("PUMPING_PREFIX_PER_HOUR", "-1", "must not be negative"),
        ("PUMPING_WINDOW_SECONDS", "10", "between 60 and 86400"),
        ("PUMPING_MIN_SENT", "0", "at least 1"),
        ("PUMPING_MIN_RATIO", "1.5", "between 0 and 1"),
        ("PUMPING_BLOCK_SECONDS", "5", "between 60"),
        ("PUMPING_FAILED_RECEIPT_WEIGHT", "101", "between 0 and 100"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({f"XIAOHE_IDENTITY_{name}": value})
    message = str(caught.value)
    assert message.startswith(f"XIAOHE_IDENTITY_{name}")
    assert says in message
    assert "\n" not in message


def test_a_range_cannot_be_both_denied_and_budgeted() -> None:
    with pytest.raises(SettingsError, match="also a budgeted range"):
        load_settings({"XIAOHE_IDENTITY_PUMPING_DENIED_RANGES": "86-170"})
    with pytest.raises(ValueError, match="both denied and budgeted"):
        PumpingPolicy(denied=parse_ranges(["86-170"]), budgeted=parse_ranges(["86-170"]))
