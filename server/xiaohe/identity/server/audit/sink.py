"""What a service needs of the audit log: a Protocol, so domain code never depends on SQL.

Also the helpers for auditing failures: `outcome_of` (the outcome an error is
recorded as) and `record_quietly` (a record whose failure must not fail the caller).
"""

from __future__ import annotations

import logging
from typing import Protocol

from xiaohe.identity.server.errors import IdentityError


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


def outcome_of(exc: BaseException) -> str:
    """The audit outcome of a failure: the error's reason in lower case, or `error`."""
    return exc.reason.lower() if isinstance(exc, IdentityError) else "error"


async def record_quietly(
    audit: AuditSink | None, action: str, target: str, outcome: str, log: logging.Logger
) -> None:
    """Audit what has already happened (or failed): a failing sink is logged, never raised.

    For records that describe a change made elsewhere (a code sent, a session
    revoked on its own, a refused login): the change must not be reported as
    failed, nor undone, because its record could not be written. The log line
    names the action, outcome, target (pseudonymous) and the error's type only.
    Inside a flow's unit of work use `audit.record` instead, so that the
    record and the change commit together or not at all.
    """
    if audit is None:
        return
    try:
        await audit.record(action, target, outcome)
    except Exception as exc:
        log.warning(
            "audit record %s (%s) for %s failed: %s", action, outcome, target, type(exc).__name__
        )
