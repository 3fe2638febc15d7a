"""Settings of documents and real-name verification: documented defaults, bounds, the HTTP
verifier's credentials required and hidden, TLS unless loopback (SECURITY X2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.config import SettingsError, load_settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.realname.verifiers import HttpVerifier, ReviewVerifier, RuleVerifier

P = "XIAOHE_IDENTITY_"
SECRET = "app-secret-value-0123"
HTTP = {
    f"{P}REAL_NAME_VERIFIER": "http",
    f"{P}REAL_NAME_HTTP_URL": "https://idcheck.example/gateway",
    f"{P}REAL_NAME_HTTP_APP_KEY": "app-key",
    f"{P}REAL_NAME_HTTP_APP_SECRET": SECRET,
}


def test_defaults() -> None:
    s = load_settings({})
    assert s.document_max_bytes == 10 * 1024 * 1024
    assert s.document_dir == ""
    assert (s.real_name_verifier, s.real_name_review, s.real_name_min_age) == ("rules", False, 18)


def test_values_from_the_environment() -> None:
    s = load_settings(
        {
            f"{P}DOCUMENT_MAX_BYTES": "2048",
            f"{P}DOCUMENT_DIR": "/srv/documents",
            f"{P}REAL_NAME_REVIEW": "on",
            f"{P}REAL_NAME_MIN_AGE": "16",
        }
    )
    assert (s.document_max_bytes, s.document_dir) == (2048, "/srv/documents")
    assert (s.real_name_review, s.real_name_min_age) == (True, 16)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DOCUMENT_MAX_BYTES", "100"),
        ("DOCUMENT_MAX_BYTES", str(65 * 1024 * 1024)),
        ("REAL_NAME_VERIFIER", "magic"),
        ("REAL_NAME_MIN_AGE", "14"),
        ("REAL_NAME_HTTP_TIMEOUT_SECONDS", "0"),
    ],
)
def test_out_of_bounds_values_stop_start_up(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{P}{name}"):
        load_settings({f"{P}{name}": value})


@pytest.mark.parametrize("missing", ["URL", "APP_KEY", "APP_SECRET"])
def test_the_http_verifier_needs_its_credentials(missing: str) -> None:
    env = {k: v for k, v in HTTP.items() if k != f"{P}REAL_NAME_HTTP_{missing}"}
    with pytest.raises(SettingsError, match=f"REAL_NAME_HTTP_{missing}"):
        load_settings(env)


def test_the_secret_is_hidden_and_plain_http_only_to_loopback() -> None:
    """X2: the app secret never reaches the repr; http:// only to a loopback address."""
    shown = repr(load_settings(HTTP))
    assert SECRET not in shown
    assert "real_name_http_app_secret=<hidden>" in shown
    with pytest.raises(SettingsError, match="REAL_NAME_HTTP_URL"):
        load_settings({**HTTP, f"{P}REAL_NAME_HTTP_URL": "http://idcheck.example/gateway"})
    assert load_settings({**HTTP, f"{P}REAL_NAME_HTTP_URL": "http://127.0.0.1:8080/x"})


@pytest.mark.parametrize(
    ("verifier", "kind"),
    [("rules", RuleVerifier), ("review", ReviewVerifier), ("http", HttpVerifier)],
)
def test_the_container_builds_the_verifier_named(verifier: str, kind: type, tmp_path: Path) -> None:
    env = {**HTTP, f"{P}REAL_NAME_VERIFIER": verifier, f"{P}DATA_DIR": str(tmp_path)}
    container = Container(load_settings(env), redis_url="redis://127.0.0.1:1")
    assert isinstance(container.real_name_verifier, kind)
    assert SECRET not in repr(container.real_name_verifier)
