"""The scenarios a run mixes, and their weights (`register:3,validate:50,…`).

The default mix is that of a platform in steady state: business systems validate
tokens far more often than anyone signs in, sessions refresh every few minutes,
and a steady trickle of visitors asks for codes, some of whom register.
"""

from __future__ import annotations

DEFAULT_WEIGHTS: dict[str, int] = {
    "validate": 50,
    "refresh": 15,
    "password_login": 10,
    "issue_code": 10,
    "sms_login": 6,
    "register": 6,
    "reset_password": 3,
}
"""Scenario name → weight; a run's `--scenarios` overrides them."""

NEEDS_CODES = frozenset({"register", "sms_login", "reset_password"})
"""Scenarios that must read a code from the dev outbox."""

DESCRIPTIONS: dict[str, str] = {
    "validate": "ValidateToken of a logged-in user's access token, as a business system",
    "refresh": "Refresh of a session's refresh token (rotation)",
    "password_login": "Login with login name and password",
    "issue_code": "IssueCode for a registration that is then abandoned; "
    "15% resend inside the cooldown, 3% mistype the number (both refused)",
    "sms_login": "IssueCode → VerifyCode → Login with the SMS ticket",
    "register": "IssueCode → VerifyCode → Register (a new test account)",
    "reset_password": "IssueCode → VerifyCode → ResetPassword (forgotten password)",
}


def parse_weights(spec: str, *, codes: bool) -> dict[str, int]:
    """The weights of `spec` (empty: the defaults); without codes, flows needing them are dropped.

    ValueError names an unknown scenario or a malformed weight.
    """
    weights = dict(DEFAULT_WEIGHTS)
    if spec.strip():
        weights = {}
        for item in spec.split(","):
            name, _, raw = item.strip().partition(":")
            if name not in DEFAULT_WEIGHTS:
                known = ", ".join(DEFAULT_WEIGHTS)
                raise ValueError(f"unknown scenario {name!r}; known: {known}")
            try:
                weight = int(raw) if raw else 1
            except ValueError:
                raise ValueError(f"the weight of {name} must be a whole number") from None
            if weight < 0:
                raise ValueError(f"the weight of {name} must not be negative")
            weights[name] = weight
    if not codes:
        weights = {name: w for name, w in weights.items() if name not in NEEDS_CODES}
    return {name: w for name, w in weights.items() if w > 0}
