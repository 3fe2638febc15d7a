"""Session models: lifetimes from settings, the active check, revoke reasons that fit the column."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import Settings, with_overrides
from xiaohe.identity.server.container import session_lifetimes
from xiaohe.identity.server.sessions.models import (
    IssuedSession,
    RevokeReason,
    SessionLifetimes,
    SessionRecord,
)


def test_lifetimes_default_to_the_documented_values() -> None:
    """10 min access tokens, 24 h idle, 7 d absolute (ARCHITECTURE "Tokens and sessions")."""
    assert SessionLifetimes() == session_lifetimes(Settings())
    assert SessionLifetimes() == SessionLifetimes(600, 86400, 604800)


def test_lifetimes_follow_the_settings() -> None:
    """from_settings reads the three token settings."""
    settings = with_overrides(
        Settings(),
        access_token_ttl_seconds=300,
        refresh_idle_seconds=7200,
        refresh_absolute_seconds=86400,
    )
    assert session_lifetimes(settings) == SessionLifetimes(300, 7200, 86400)


@pytest.mark.parametrize("field", ["access_ttl", "idle", "absolute"])
def test_lifetimes_must_be_positive(field: str) -> None:
    """A zero or negative lifetime is a configuration error."""
    with pytest.raises(ValueError, match=field):
        SessionLifetimes(**{field: 0})


def test_session_record_is_active_only_inside_both_lifetimes() -> None:
    """Active means not revoked, before the idle and before the absolute deadline."""
    record = SessionRecord(
        session_id="ses_1",
        account_id="acc_1",
        audience="aud",
        amr=("pwd",),
        client_id="c",
        ip_masked="",
        user_agent="",
        created_at=0.0,
        last_used_at=0.0,
        idle_expires_at=100.0,
        absolute_expires_at=150.0,
    )
    assert record.is_active(99.9)
    assert not record.is_active(100.0)
    shorter = SessionRecord(**{**record.__dict__, "idle_expires_at": 500.0})
    assert shorter.is_active(149.0)
    assert not shorter.is_active(150.0)
    revoked = SessionRecord(**{**record.__dict__, "revoked_at": 10.0, "revoke_reason": "logout"})
    assert not revoked.is_active(50.0)
    assert record.info().session_id == "ses_1"


def test_revoke_reasons_fit_the_column() -> None:
    """`sessions.revoke_reason` is 40 characters; every reason is a short lower-case code."""
    assert all(len(r.value) <= 40 and r.value.replace("_", "").isalpha() for r in RevokeReason)


def test_issued_session_repr_hides_the_tokens() -> None:
    """Tokens never show up in a repr (and so not in logs or tracebacks)."""
    issued = IssuedSession("ses_1", "acc_1", "eyJ.secret.access", 600, "xhr_secret", 86400)
    assert "secret" not in repr(issued)
