"""Settings that guard secrets: TLS requirements, explicit keys, no secret in a repr or error."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.config import Settings, SettingsError, load_settings

P = "XIAOHE_IDENTITY_"


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", ":50051"])
def test_plaintext_on_a_routable_address_is_refused(listen: str) -> None:
    """F5: no plaintext gRPC on a non-loopback address; the error names both ways out."""
    with pytest.raises(SettingsError) as caught:
        load_settings({f"{P}LISTEN": listen})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{P}TLS_CERT_FILE" in message
    assert f"{P}ALLOW_PLAINTEXT" in message


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "[::1]:50051", "localhost:50051"])
def test_plaintext_on_loopback_is_the_dev_default(listen: str) -> None:
    assert load_settings({f"{P}LISTEN": listen}).listen == listen


def test_plaintext_on_a_routable_address_when_explicitly_allowed() -> None:
    """F5: a mesh that terminates TLS opts in explicitly."""
    env = {f"{P}LISTEN": "0.0.0.0:50051", f"{P}ALLOW_PLAINTEXT": "true"}
    assert load_settings(env).allow_plaintext


def test_tls_makes_a_routable_address_acceptable(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    env = {f"{P}LISTEN": "0.0.0.0:50051", f"{P}TLS_CERT_FILE": str(cert)}
    env[f"{P}TLS_KEY_FILE"] = str(key)
    assert load_settings(env).tls_cert_file == str(cert)


def test_an_external_database_needs_an_explicit_key_ring() -> None:
    """F5: with PostgreSQL, no replica generates keys of its own."""
    env = {f"{P}DATABASE_URL": "postgresql+asyncpg://identity@db/identity"}
    with pytest.raises(SettingsError, match=f"{P}KEYRING_FILE: required with an external"):
        load_settings(env)
    env[f"{P}KEYRING_FILE"] = "/run/secrets/keyring.json"
    settings = load_settings(env)
    assert not settings.embedded_store


def test_sqlite_is_the_embedded_store(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).embedded_store
    assert Settings(database_url="sqlite:////srv/identity.db").embedded_store


def test_smtp_credentials_need_starttls() -> None:
    """X2: SMTP never logs in without TLS."""
    env = {f"{P}SMTP_USERNAME": "mailer", f"{P}SMTP_PASSWORD": "s3cret-smtp"}
    with pytest.raises(SettingsError, match=f"{P}SMTP_STARTTLS: must be true") as caught:
        load_settings(env)
    assert "s3cret-smtp" not in str(caught.value)
    env[f"{P}SMTP_STARTTLS"] = "true"
    assert load_settings(env).smtp_starttls


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://sms.example.net/send", True),
        ("http://127.0.0.1:8080/send", True),
        ("http://[::1]:8080/send", True),
        ("http://localhost:8080/send", True),
        ("http://sms.example.net/send", False),
        ("http://10.0.0.5/send", False),
        ("ftp://sms.example.net/send", False),
    ],
)
def test_the_sms_gateway_takes_plain_http_only_on_loopback(url: str, accepted: bool) -> None:
    """X2: provider traffic carries phone numbers and codes; plain HTTP only to this machine."""
    env = {f"{P}SMS_PROVIDER": "http", f"{P}SMS_GATEWAY_URL": url}
    if accepted:
        assert load_settings(env).sms_gateway_url == url
    else:
        with pytest.raises(SettingsError, match=f"{P}SMS_GATEWAY_URL"):
            load_settings(env)


def test_repr_shows_no_secret() -> None:
    """X2: provider credentials and URL passwords never appear in a repr."""
    settings = load_settings(
        {
            f"{P}SMTP_USERNAME": "mailer",
            f"{P}SMTP_PASSWORD": "smtp-pass-4417",
            f"{P}SMTP_STARTTLS": "true",
            f"{P}SMS_PROVIDER": "http",
            f"{P}SMS_GATEWAY_URL": "https://gw:gw-url-pass-9@sms.example.net/send",
            f"{P}SMS_GATEWAY_SECRET": "gateway-secret-2231",
            f"{P}DATABASE_URL": "postgresql+asyncpg://identity:db-pass-7731@db/identity",
            f"{P}REDIS_URL": "redis://:redis-pass-5510@cache:6379/0",
            f"{P}KEYRING_FILE": "/run/secrets/keyring.json",
        }
    )
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        for secret in (
            "smtp-pass-4417",
            "gw-url-pass-9",
            "gateway-secret-2231",
            "db-pass-7731",
            "redis-pass-5510",
        ):
            assert secret not in text
    assert "postgresql+asyncpg://identity:***@db/identity" in repr(settings)
    assert "smtp_username='mailer'" in repr(settings)


def test_an_unreadable_secret_is_not_echoed() -> None:
    """A malformed URL setting is refused without repeating its value."""
    with pytest.raises(SettingsError) as caught:
        load_settings({f"{P}REDIS_URL": "http://:leaky-pass@x"})
    assert "leaky-pass" not in str(caught.value)


@pytest.mark.parametrize("leeway", ["-1", "61", "300"])
def test_token_leeway_stays_inside_the_revocation_window(leeway: str) -> None:
    """T3: a leeway past what the revocation list keeps would let revoked tokens validate."""
    with pytest.raises(SettingsError, match=f"{P}TOKEN_LEEWAY_SECONDS"):
        load_settings({f"{P}TOKEN_LEEWAY_SECONDS": leeway})


def test_token_leeway_defaults_to_five_seconds() -> None:
    assert load_settings({}).token_leeway_seconds == 5.0
