"""Message texts: every purpose renders on both channels, with the code and the TTL in minutes."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.delivery.templates import (
    CHANNELS,
    NOTICE_KINDS,
    PURPOSES,
    compose_code_message,
    render_code_email_subject,
    render_code_message,
    render_notice,
    render_notice_email_subject,
)

ALL_PURPOSES = [
    "LOGIN",
    "REGISTER",
    "RESET_PASSWORD",
    "BIND_PHONE",
    "BIND_EMAIL",
    "CHANGE_PHONE",
    "RECOVER_ACCOUNT",
    "REAL_NAME",
    "DEACTIVATE",
    "EXPORT_DATA",
]


def test_every_documented_purpose_and_channel_is_known() -> None:
    assert set(PURPOSES) == set(ALL_PURPOSES)
    assert set(CHANNELS) == {"SMS", "EMAIL"}


def test_register_sms_wording_is_exact() -> None:
    text = render_code_message("SMS", "REGISTER", "123456", 300)
    assert text == (
        "【小禾企服网】您正在注册小禾企服网账号，验证码：123456，5分钟内有效。请勿将验证码告知他人。"
    )


@pytest.mark.parametrize("purpose", ALL_PURPOSES)
@pytest.mark.parametrize("channel", ["SMS", "EMAIL"])
@pytest.mark.parametrize(("ttl", "minutes"), [(300, "5分钟"), (600, "10分钟")])
def test_each_purpose_renders_code_and_ttl(
    channel: str, purpose: str, ttl: int, minutes: str
) -> None:
    text = render_code_message(channel, purpose, "908172", ttl)
    assert text.count("908172") == 1
    assert minutes in text
    assert "请勿将验证码告知他人" in text
    if channel == "SMS":
        assert text.startswith("【小禾企服网】")
        assert len(text) <= 70 * 2  # at most two concatenated SMS segments
    else:
        assert "小禾企服网" in text
        assert len(text) > len(render_code_message("SMS", purpose, "908172", ttl))


def test_purposes_have_distinct_texts() -> None:
    texts = {render_code_message("SMS", p, "111111", 300) for p in ALL_PURPOSES}
    assert len(texts) == len(ALL_PURPOSES)


@pytest.mark.parametrize("purpose", ALL_PURPOSES)
def test_email_subject_names_the_purpose_but_not_the_code(purpose: str) -> None:
    subject = render_code_email_subject(purpose)
    assert subject.startswith("【小禾企服网】")
    assert subject.endswith("验证码")
    assert not any(ch.isdigit() for ch in subject)


def test_ttl_is_stated_in_whole_minutes_rounded_down() -> None:
    assert "1分钟内有效" in render_code_message("SMS", "LOGIN", "123456", 119)
    with pytest.raises(ValueError, match="one minute"):
        render_code_message("SMS", "LOGIN", "123456", 59)


def test_unknown_purpose_channel_or_bad_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="purpose") as info:
        render_code_message("SMS", "LOGN", "123456", 300)
    assert "123456" not in str(info.value)
    with pytest.raises(ValueError, match="channel") as info:
        render_code_message("FAX", "LOGIN", "123456", 300)
    assert "123456" not in str(info.value)
    with pytest.raises(ValueError, match="purpose"):
        render_code_email_subject("login")
    for bad in ["", "12 34", "１２３４５６"]:
        with pytest.raises(ValueError, match="code") as info:
            render_code_message("SMS", "LOGIN", bad, 300)
        if bad:
            assert bad not in str(info.value)


def test_notices_render_their_fields() -> None:
    text = render_notice("phone_changed", at="2030-01-02 03:04", new_phone="138****0000")
    assert text.startswith("【小禾企服网】")
    assert "2030-01-02 03:04" in text
    assert "138****0000" in text
    assert "如非本人操作" in render_notice("password_changed", at="2030-01-02 03:04")
    for kind in NOTICE_KINDS:
        assert render_notice_email_subject(kind).startswith("【小禾企服网】")


def test_notice_fields_must_match_exactly() -> None:
    with pytest.raises(ValueError, match="fields"):
        render_notice("phone_changed", at="2030-01-02 03:04")
    with pytest.raises(ValueError, match="fields"):
        render_notice("password_changed", at="x", extra="y")
    with pytest.raises(ValueError, match="notice kind"):
        render_notice("pasword_changed", at="x")
    with pytest.raises(ValueError, match="notice kind"):
        render_notice_email_subject("nope")


def test_notice_values_are_not_interpreted_as_templates() -> None:
    text = render_notice("email_changed", at="{at}", new_email="a{0}@x.example")
    assert "{at}" in text
    assert "a{0}@x.example" in text


def test_a_composed_code_email_has_its_subject_and_an_sms_none() -> None:
    """A code email goes out with the purpose's subject line, never the code in it."""
    text, subject = compose_code_message("EMAIL", "BIND_EMAIL", "908172", 300)
    assert text == render_code_message("EMAIL", "BIND_EMAIL", "908172", 300)
    assert subject == render_code_email_subject("BIND_EMAIL")
    assert subject
    assert "908172" not in subject
    assert compose_code_message("SMS", "LOGIN", "908172", 300)[1] == ""
