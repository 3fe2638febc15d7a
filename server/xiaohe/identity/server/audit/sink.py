"""What a service needs of the audit log: a Protocol, so domain code never depends on SQL."""

from __future__ import annotations

from typing import Protocol


class AuditSink(Protocol):
    """The audit log (`audit.log.AuditLog`).

    `target` is always a pseudonym (an account, session or client id, a destination
    tag, `unknown`), never personal data; the acting client and end-user account
    come from the request context. The result is ignored (typed `object`), so
    `AuditLog.record`, which returns the new sequence number, fits as is.
    """

    async def record(self, action: str, target: str, outcome: str) -> object:
        """Append one audit record."""
        ...
