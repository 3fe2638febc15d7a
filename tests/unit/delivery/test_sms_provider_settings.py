"""SMS platform settings: validation, secrets hidden, the chain the container builds (X2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.config import SettingsError, load_settings
from xiaohe.identity.server.container import sms_lease_seconds, sms_provider
from xiaohe.identity.server.delivery.aliyun import AliyunSmsProvider
from xiaohe.identity.server.delivery.failover import FailoverProvider
from xiaohe.identity.server.delivery.platforms import PlatformTemplates, parse_purpose_map
from xiaohe.identity.server.delivery.providers import (
    DeliveryError,
    JsonlFileProvider,
    OutgoingMessage,
)
from xiaohe.identity.server.delivery.templates import notice_params, render_notice
from xiaohe.identity.server.observability.metrics import Metrics

P = "XIAOHE_IDENTITY_"
ALIYUN_SECRET, TENCENT_SECRET = "aliyun-TOPSECRET-1", "tencent-TOPSECRET-2"
BOTH = {
    f"{P}SMS_PROVIDERS": "aliyun,tencent",
    f"{P}ALIYUN_SMS_ACCESS_KEY_ID": "LTAI-id",
    f"{P}ALIYUN_SMS_ACCESS_KEY_SECRET": ALIYUN_SECRET,
    f"{P}ALIYUN_SMS_SIGN_NAME": "小禾企服网",
    f"{P}ALIYUN_SMS_TEMPLATES": "LOGIN=SMS_1,RESET_PASSWORD=SMS_2",
    f"{P}TENCENT_SMS_SECRET_ID": "AKID-id",
    f"{P}TENCENT_SMS_SECRET_KEY": TENCENT_SECRET,
    f"{P}TENCENT_SMS_SDK_APP_ID": "1400000001",
    f"{P}TENCENT_SMS_SIGN_NAME": "小禾企服网",
    f"{P}TENCENT_SMS_TEMPLATES": "LOGIN=1001",
}


def test_notice_variables_follow_the_order_of_the_text() -> None:
    """Tencent fills {1}, {2}, ... by position: the order must be the text's."""
    fields = {"login_name": "zhang.san", "at": "2026-12-02 10:00"}
    text = render_notice("login_name_reminder", **fields)
    variables = notice_params("login_name_reminder", **fields)
    assert list(variables) == sorted(variables, key=lambda name: text.index(fields[name]))
    assert variables == fields


def _notice(kind: str, **fields: str) -> OutgoingMessage:
    return OutgoingMessage(
        "m1",
        "SMS",
        "+8613812345678",
        "NOTICE",
        render_notice(kind, **fields),
        template_params=notice_params(kind, **fields),
        template=kind,
    )


def test_a_notice_uses_its_own_template_or_the_fixed_text_one_when_it_carries_nothing() -> None:
    templates = PlatformTemplates(
        "小禾企服网", {"NOTICE": "SMS_9", "login_name_reminder": "SMS_7", "LOGIN": "SMS_1"}
    )
    reminder = _notice("login_name_reminder", at="2026-12-02 10:00", login_name="zhang.san")
    assert templates.for_message("aliyun", reminder) == (
        "小禾企服网",
        "SMS_7",
        {"at": "2026-12-02 10:00", "login_name": "zhang.san"},
    )
    changed = _notice("password_changed", at="2026-12-02 10:00")
    assert templates.for_message("aliyun", changed) == ("小禾企服网", "SMS_9", {})


def test_a_notice_that_carries_a_login_name_never_goes_out_as_fixed_text() -> None:
    """Without its own template the reminder moves on to the next provider, not lost."""
    templates = PlatformTemplates("小禾企服网", {"NOTICE": "SMS_9"})
    reminder = _notice("login_name_reminder", at="2026-12-02 10:00", login_name="zhang.san")
    with pytest.raises(DeliveryError) as caught:
        templates.for_message("aliyun", reminder)
    assert caught.value.failover


def test_purpose_maps_parse_and_refuse_malformed_entries() -> None:
    assert parse_purpose_map(" LOGIN=SMS_1 , RESET_PASSWORD=SMS_2,") == {
        "LOGIN": "SMS_1",
        "RESET_PASSWORD": "SMS_2",
    }
    for bad in ("LOGIN", "login=SMS_1", "LOGIN=", "LOGIN=a,LOGIN=b"):
        with pytest.raises(ValueError, match="entry"):
            parse_purpose_map(bad)


def test_both_platforms_load_and_secrets_stay_out_of_repr() -> None:
    settings = load_settings(BOTH)
    assert settings.effective_sms_providers == ("aliyun", "tencent")
    shown = repr(settings)
    assert ALIYUN_SECRET not in shown
    assert TENCENT_SECRET not in shown


def test_sms_provider_alone_still_works() -> None:
    assert load_settings({}).effective_sms_providers == ("file",)
    env = {k: v for k, v in BOTH.items() if "TENCENT" not in k and "PROVIDERS" not in k}
    env[f"{P}SMS_PROVIDER"] = "aliyun"
    assert load_settings(env).effective_sms_providers == ("aliyun",)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({f"{P}SMS_PROVIDERS": "aliyun,carrier-pigeon"}, "SMS_PROVIDERS"),
        ({f"{P}SMS_PROVIDERS": "aliyun,aliyun"}, "SMS_PROVIDERS"),
        ({f"{P}ALIYUN_SMS_ACCESS_KEY_SECRET": ""}, "ALIYUN_SMS_ACCESS_KEY_SECRET"),
        ({f"{P}TENCENT_SMS_SDK_APP_ID": ""}, "TENCENT_SMS_SDK_APP_ID"),
        ({f"{P}ALIYUN_SMS_TEMPLATES": "LOGON=SMS_1"}, "ALIYUN_SMS_TEMPLATES"),
        ({f"{P}TENCENT_SMS_SIGN_NAMES": "LOGIN"}, "TENCENT_SMS_SIGN_NAMES"),
        ({f"{P}ALIYUN_SMS_ENDPOINT": "http://sms.example.net"}, "ALIYUN_SMS_ENDPOINT"),
        ({f"{P}TENCENT_SMS_ENDPOINT": "https://host/path"}, "TENCENT_SMS_ENDPOINT"),
        ({f"{P}SMS_UNKNOWN_OUTCOME": "guess"}, "SMS_UNKNOWN_OUTCOME"),
        ({f"{P}SMS_BREAKER_FAILURES": "0"}, "SMS_BREAKER_"),
    ],
)
def test_invalid_sms_settings_stop_start_up_with_one_line(
    change: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({**BOTH, **change})
    message = str(info.value)
    assert message.startswith(P + named)
    assert "\n" not in message
    assert ALIYUN_SECRET not in message
    assert TENCENT_SECRET not in message


def test_the_container_builds_a_failover_chain_in_order(tmp_path: Path) -> None:
    settings = load_settings({**BOTH, f"{P}DATA_DIR": str(tmp_path)})
    provider = sms_provider(settings, FakeClock(), Metrics.in_memory())
    assert isinstance(provider, FailoverProvider)
    assert list(provider.breakers) == ["aliyun", "tencent"]
    assert not provider.idempotent
    assert sms_lease_seconds(settings) >= 2 * 2 * (3.0 + 5.0)
    alone = load_settings({f"{P}DATA_DIR": str(tmp_path)})
    assert isinstance(sms_provider(alone, FakeClock(), Metrics.in_memory()), JsonlFileProvider)
    env = {k: v for k, v in BOTH.items() if "PROVIDERS" not in k}
    only = load_settings({**env, f"{P}SMS_PROVIDER": "aliyun"})
    assert isinstance(sms_provider(only, FakeClock(), Metrics.in_memory()), AliyunSmsProvider)


def test_provider_attempts_and_breaker_transitions_are_counted() -> None:
    metrics = Metrics.in_memory()
    metrics.provider_attempt("aliyun", "accepted")
    metrics.breaker_state("tencent", "open")
    text = metrics.render().decode()
    assert 'xiaohe_provider_attempts_total{outcome="accepted",provider="aliyun"} 1.0' in text
    assert 'xiaohe_provider_breaker_transitions_total{provider="tencent",state="open"} 1.0' in text
