"""Whether a failed HTTP call to an SMS platform can have reached it.

The platforms' SDKs (requests and urllib3 underneath) turn every network
failure into one exception type with a message, but keep the original
exception on the chain (`__cause__`, `__context__`, urllib3's `reason`). A
failure while resolving the name or opening the connection means the request
never left: the message can safely go to the next provider. Anything else (a
read timeout, a reset or closed connection while waiting for the answer, a TLS
error) may come after the platform took the request, so the outcome is unknown.
"""

from __future__ import annotations

import socket

from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

_NOT_SENT: tuple[type[BaseException], ...] = (
    NewConnectionError,  # refused, unreachable, name not resolved (NameResolutionError)
    ConnectTimeoutError,  # no connection within the connect timeout
    ConnectionRefusedError,
    socket.gaierror,
)


def never_sent(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) failed before any byte of the request was sent."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(seen) < 32:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _NOT_SENT):
            return True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(getattr(current, "args", ()))
        linked.append(getattr(current, "inner_exception", None))
        pending.extend(e for e in linked if isinstance(e, BaseException))
    return False


__all__ = ["never_sent"]
