"""Deactivation records (frozen dataclasses); the data key only encrypted, never in `repr`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PendingDeactivation:
    """One account in its cooling-off period; times in epoch seconds."""

    account_id: str
    requested_at: float
    due_at: float
    data_key_pending: bytes = field(repr=False)
    """The account's data key, encrypted under its pending key (Redis)."""
    case_keys_pending: bytes | None = field(default=None, repr=False)
    """The data keys of the review cases about the account (JSON), likewise; None if none."""


__all__ = ["PendingDeactivation"]
