"""Callback listener settings: off by default, secrets hidden and strong, allowlists parsed."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import SettingsError, load_settings

P = "XIAOHE_IDENTITY_"
SECRET = "callback-secret-0123456789"


def test_the_listener_is_off_by_default_and_secrets_never_show() -> None:
    """X1/X2: secrets are settings outside every repr."""
    assert load_settings({}).callback_listen == ""
    settings = load_settings(
        {
            f"{P}CALLBACK_LISTEN": "127.0.0.1:8080",
            f"{P}CALLBACK_ALIYUN_SECRET": SECRET,
            f"{P}CALLBACK_TENCENT_SECRET": SECRET + "x",
            f"{P}CALLBACK_ALIYUN_ALLOWED_CIDRS": "203.0.113.0/24, 2001:db8::/32",
        }
    )
    assert settings.callback_aliyun_allowed_cidrs == ("203.0.113.0/24", "2001:db8::/32")
    assert SECRET not in repr(settings)
    assert "callback_aliyun_secret=<hidden>" in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CALLBACK_LISTEN", "nohost"),
        ("CALLBACK_LISTEN", "0.0.0.0:8080"),  # plaintext on a routable address
        ("CALLBACK_MAX_BODY_BYTES", str(10 * 1024 * 1024)),
        ("CALLBACK_ALIYUN_SECRET", "short"),
        ("CALLBACK_TENCENT_SECRET", "has/a/slash/in/it/0123456789"),
        ("CALLBACK_TENCENT_ALLOWED_CIDRS", "203.0.113.0/33"),
    ],
)
def test_bad_callback_settings_stop_start_up(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({f"{P}{name}": value})
    assert f"{P}{name}" in str(caught.value)
    if "SECRET" in name:
        assert value not in str(caught.value)


def test_a_routable_listener_with_plaintext_explicitly_allowed() -> None:
    settings = load_settings({f"{P}CALLBACK_LISTEN": "0.0.0.0:8080", f"{P}ALLOW_PLAINTEXT": "1"})
    assert settings.callback_listen == "0.0.0.0:8080"
