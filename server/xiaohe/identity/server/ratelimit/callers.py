"""Limits on who asks: per end-user IP and per calling client, for one action.

Every flow that anyone may call at will (sending a code, verifying one,
checking whether a login name is taken) is bounded twice before it does its
own work: `<action>.ip` per hour for the end user's address (IPv4, or the IPv6
/64 a user sits behind) and `<action>.client` per minute for the client that
relays it. A window is skipped when the request does not say who it is for.
Both windows are charged in one round trip to Redis; a refusal by either refunds
the other, so a refused request costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xiaohe.identity.server.ratelimit.limiter import Charge, RateLimiter, Reservation, Window

log = logging.getLogger(__name__)

HOUR = 3600.0
MINUTE = 60.0
_SAFE_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def ip_key(ip_tag: str, action: str = "code.issue") -> str:
    """Rate-limit key of an end-user IP's pseudonym for `action`."""
    return f"xh:rl:{{ip:{ip_tag}}}:{action}"


def client_key(client_id: str, action: str = "code.issue") -> str:
    """Rate-limit key of a calling client for `action` (odd ids are hashed to keep keys tidy)."""
    if not _SAFE_CLIENT_ID.fullmatch(client_id):
        client_id = "h-" + hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:32]
    return f"xh:rl:{{cl:{client_id}}}:{action}"


@dataclass(frozen=True)
class CallerBudget:
    """How often one end user (per hour) and one client (per minute) may ask for an action."""

    per_ip_hour: int
    per_client_minute: int


class CallerLimits:
    """Charges and refunds the `<action>.ip` and `<action>.client` windows."""

    def __init__(self, limiter: RateLimiter, ip_tag: Callable[[str], str]) -> None:
        self._limiter = limiter
        self._ip_tag = ip_tag

    async def charge(
        self,
        action: str,
        budget: CallerBudget,
        *,
        client_id: str,
        end_user_ip: str | None,
        now: float,
    ) -> list[Reservation]:
        """Charge the caller's windows; RateLimited names the refusing policy (nothing kept).

        The IP window comes first: when both refuse, the answer names the IP's policy.
        """
        charges: list[Charge] = []
        if end_user_ip:
            key = ip_key(self._ip_tag(end_user_ip), action)
            charges.append(Charge(f"{action}.ip", key, (Window(budget.per_ip_hour, HOUR),)))
        if client_id:
            key = client_key(client_id, action)
            charges.append(
                Charge(f"{action}.client", key, (Window(budget.per_client_minute, MINUTE),))
            )
        return await self._limiter.acquire_all(charges, now)

    async def release(self, reservations: Sequence[Reservation]) -> None:
        """Refund reservations, best effort: the window forgets them anyway."""
        for reservation in reservations:
            try:
                await self._limiter.release(reservation)
            except Exception:
                log.warning("could not refund a %s reservation", reservation.policy)


__all__ = ["HOUR", "MINUTE", "CallerBudget", "CallerLimits", "client_key", "ip_key"]
