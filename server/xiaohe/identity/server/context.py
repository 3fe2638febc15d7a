"""Per-request context (request id, calling client, forwarded end-user data) in a contextvar.

The transport interceptor sets it once per RPC and resets it when the RPC ends;
`transport/users.require_user` rebinds it with the end user's account once their
access token is verified. Domain code reads it for audit records and per-IP
limits without threading it through every signature.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestContext:
    """Who is calling and on whose behalf. End-user fields are set only for trusted clients."""

    request_id: str
    client_id: str = ""
    grants: frozenset[str] = field(default_factory=frozenset)
    end_user_ip: str = ""
    end_user_agent: str = ""
    device_id: str = ""
    # The signed-in end user's account, once a bearer token was verified (transport/users.py).
    account_id: str = ""


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "xiaohe_request_context", default=None
)


def current() -> RequestContext:
    """The context of the RPC being served (an anonymous one outside any RPC)."""
    ctx = _current.get()
    return ctx if ctx is not None else RequestContext(request_id="-")


def bind(ctx: RequestContext) -> contextvars.Token[RequestContext | None]:
    """Make ctx current; returns a token for `reset`."""
    return _current.set(ctx)


def reset(token: contextvars.Token[RequestContext | None]) -> None:
    """Restore the previous context."""
    _current.reset(token)
