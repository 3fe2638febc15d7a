"""Settings of the number-status check (recycled numbers): off by default, credentials
required when on, secrets never shown, TLS unless loopback (SECURITY X2)."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import SettingsError, load_settings

P = "XIAOHE_IDENTITY_NUMBER_STATUS_"
SECRET = "s3cret-key-value"
AUTH = "auth-code-value"
ON = {
    f"{P}PROVIDER": "aliyun",
    f"{P}ACCESS_KEY_ID": "LTAI-id",
    f"{P}ACCESS_KEY_SECRET": SECRET,
    f"{P}AUTH_CODE": AUTH,
}


def test_off_by_default_with_the_documented_threshold() -> None:
    settings = load_settings({})
    assert settings.number_status_provider == ""
    assert settings.number_status_min_binding_age_days == 180
    assert settings.number_status_send_when_unknown is True


def test_secrets_never_reach_the_repr() -> None:
    """X2: the access key secret and the auth code are hidden."""
    shown = repr(load_settings(ON))
    assert SECRET not in shown
    assert AUTH not in shown
    assert "number_status_access_key_secret=<hidden>" in shown


@pytest.mark.parametrize("missing", ["ACCESS_KEY_ID", "ACCESS_KEY_SECRET", "AUTH_CODE"])
def test_each_credential_is_required_when_on(missing: str) -> None:
    env = {k: v for k, v in ON.items() if k != f"{P}{missing}"}
    with pytest.raises(SettingsError, match=f"{P}{missing}"):
        load_settings(env)


@pytest.mark.parametrize(
    ("endpoint", "accepted"),
    [
        ("https://status.example.cn", True),
        ("http://127.0.0.1:8080", True),
        ("http://status.example.cn", False),
        ("ftp://status.example.cn", False),
    ],
)
def test_the_endpoint_is_tls_unless_loopback(endpoint: str, accepted: bool) -> None:
    """X2: the signed requests go over TLS, or stay on this machine (the tests' fake)."""
    env = {**ON, f"{P}ENDPOINT": endpoint}
    if accepted:
        assert load_settings(env).number_status_endpoint == endpoint
    else:
        with pytest.raises(SettingsError, match=f"{P}ENDPOINT") as caught:
            load_settings(env)
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("PROVIDER", "tencent"), ("MIN_BINDING_AGE_DAYS", "-1"), ("TIMEOUT_SECONDS", "0")],
)
def test_bad_values_stop_start_up(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{P}{name}"):
        load_settings({f"{P}{name}": value})
