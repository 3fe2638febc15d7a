"""Security notices: what an account's channels are told after a change (SECURITY.md H2).

A notice says what happened and when, in the zh-CN wording of `templates.py`,
never a code, a password or a full number. It is queued in the outbox like a
code message, so inside a flow's unit of work it commits with the change it
reports, or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.delivery.outbox import NOTICE_MESSAGE_TTL_SECONDS
from xiaohe.identity.server.delivery.templates import (
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    notice_params,
    notice_time,
    render_notice,
    render_notice_email_subject,
)

NOTICE_PURPOSE: Final = "NOTICE"
"""Outbox purpose of security notices (no code inside)."""


class NoticeQueue(Protocol):
    """The delivery outbox (`outbox.Outbox`)."""

    async def enqueue(
        self,
        channel: str,
        destination: str,
        purpose: str,
        text: str,
        subject: str = "",
        expires_in_seconds: float = ...,
        *,
        template: str = "",
        params: Mapping[str, str] | None = None,
    ) -> str:
        """Queue one message; Unavailable if nothing was queued."""
        ...


class Notices:
    """Renders security notices and queues them for a phone and/or an email address."""

    def __init__(self, outbox: NoticeQueue, clock: Clock) -> None:
        self._outbox = outbox
        self._clock = clock

    async def send(self, kind: str, *, phone: str = "", email: str = "", **fields: str) -> int:
        """Queue the notice `kind` (its `at` is now) to each address given; returns how many."""
        at = notice_time(self._clock.now())
        text = render_notice(kind, at=at, **fields)
        variables = notice_params(kind, at=at, **fields)
        sent = 0
        if phone:
            await self._outbox.enqueue(
                CHANNEL_SMS,
                phone,
                NOTICE_PURPOSE,
                text,
                expires_in_seconds=NOTICE_MESSAGE_TTL_SECONDS,
                template=kind,
                params=variables,
            )
            sent += 1
        if email:
            await self._outbox.enqueue(
                CHANNEL_EMAIL,
                email,
                NOTICE_PURPOSE,
                text,
                render_notice_email_subject(kind),
                expires_in_seconds=NOTICE_MESSAGE_TTL_SECONDS,
            )
            sent += 1
        return sent


__all__ = ["NOTICE_PURPOSE", "NoticeQueue", "Notices"]
