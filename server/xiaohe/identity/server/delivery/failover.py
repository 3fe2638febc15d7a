"""Ordered providers for one channel, each behind a circuit breaker.

`FailoverProvider` tries its providers in order and moves on only when the
current one definitely did not accept the message: it answered with a
provider-side refusal (5xx, throttling, no balance, refused credentials), it
could not be reached before anything was sent, it has no template for the
purpose, or its breaker is open. It stops at once on

- acceptance: `Accepted` names the provider that took it;
- a permanent refusal of the message itself (invalid number, template
  rejected, the platform's per-number limit): another platform would refuse
  it too, or would bypass a limit that protects the subscriber;
- an unknown outcome (`DeliveryOutcomeUnknown`): the first provider may be
  sending it, and a second would make it two SMS.

Circuit breaker, per provider (`CircuitBreaker`). Closed: calls go through and
consecutive failures are counted; a success resets the count. After
`failure_threshold` consecutive failures (a provider-side refusal, an
unreachable provider or an unknown outcome) it opens: the provider is skipped
without being called. After `cooldown_seconds` (on the injected clock) it is
half-open: exactly one message is let through as a probe; success closes it,
failure opens it again for another cool-down. A permanent refusal of a
message counts as a success (the provider is up and answering); a purpose the
provider has no template for does not count either way. Each process keeps
its own breakers, so with N workers a dead provider costs at most N x
threshold messages a detour, then N probes per cool-down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NoReturn, Protocol

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.delivery.providers import (
    Accepted,
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutgoingMessage,
    Provider,
    is_idempotent,
)

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

ATTEMPT_ACCEPTED: Final = "accepted"
ATTEMPT_FAILED: Final = "failed"
"""Definitely not accepted, the provider's fault: the next provider is tried."""
ATTEMPT_REJECTED: Final = "rejected"
"""The message was refused for good (invalid number, template): no failover."""
ATTEMPT_UNKNOWN: Final = "unknown"
ATTEMPT_SKIPPED: Final = "skipped"
"""Not called: its breaker is open."""
ATTEMPT_UNSUPPORTED: Final = "unsupported"
"""Not able to send this purpose (no template configured): the next provider is tried."""


class FailoverMetrics(Protocol):
    """Counts per-provider attempt outcomes and breaker transitions."""

    def provider_attempt(self, provider: str, outcome: str) -> None:
        """One provider was tried (or skipped) with `outcome`."""
        ...

    def breaker_state(self, provider: str, state: str) -> None:
        """A provider's breaker moved to `state` (closed, open, half_open)."""
        ...


class CircuitBreaker:
    """Closed → open after N consecutive failures → half-open after a cool-down → closed.

    Not thread-safe; it lives on one event loop. See the module docstring.
    """

    def __init__(
        self,
        name: str,
        clock: Clock,
        failure_threshold: int = 5,
        cooldown_seconds: float = 60.0,
        metrics: FailoverMetrics | None = None,
    ) -> None:
        if failure_threshold < 1 or cooldown_seconds <= 0:
            raise ValueError("a breaker needs a threshold >= 1 and a positive cool-down")
        self.name = name
        self._clock = clock
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._metrics = metrics
        self._state: str = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """closed, open or half_open (an open breaker past its cool-down reads half_open)."""
        if self._state == OPEN and self._clock.now() >= self._opened_at + self._cooldown:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go through now; in half-open state only one probe at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN or self._probing:
            return False
        self._move(HALF_OPEN)
        self._probing = True
        return True

    def success(self) -> None:
        """The provider answered: reset the count, close the breaker."""
        self._failures = 0
        self._probing = False
        self._move(CLOSED)

    def failure(self) -> None:
        """The provider failed: count it; open at the threshold, or at once when probing."""
        self._failures += 1
        if self._probing or self._state == HALF_OPEN or self._failures >= self._threshold:
            self._probing = False
            self._opened_at = self._clock.now()
            self._move(OPEN)

    def release(self) -> None:
        """The call proved nothing either way: free the probe slot, change nothing else."""
        self._probing = False

    def _move(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self._metrics is not None:
                self._metrics.breaker_state(self.name, state)


class FailoverProvider:
    """Sends through the first provider of an ordered list that definitely takes the message.

    `idempotent` holds only if every provider in the list is (a resend might
    go to any of them).
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        clock: Clock,
        failure_threshold: int = 5,
        cooldown_seconds: float = 60.0,
        metrics: FailoverMetrics | None = None,
    ) -> None:
        if not providers:
            raise ValueError("failover needs at least one provider")
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError("each provider appears once in a failover list")
        self._providers = tuple(providers)
        self._metrics = metrics
        self.breakers = {
            p.name: CircuitBreaker(p.name, clock, failure_threshold, cooldown_seconds, metrics)
            for p in providers
        }
        self.name = names[0]
        """The first choice; the dispatcher records the one that took each message."""
        self.idempotent = all(is_idempotent(p) for p in providers)

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Send through the first provider that takes it; raise the decisive DeliveryError."""
        errors: list[DeliveryError] = []
        skipped = False
        for provider in self._providers:
            breaker = self.breakers[provider.name]
            if not breaker.allow():
                skipped = True
                self._count(provider.name, ATTEMPT_SKIPPED)
                continue
            try:
                accepted = await provider.send(message)
            except DeliveryOutcomeUnknown as exc:
                breaker.failure()
                self._count(provider.name, ATTEMPT_UNKNOWN)
                exc.provider = exc.provider or provider.name
                # A retry goes through the whole chain again: if this provider's circuit
                # opens meanwhile, a provider without idempotency would send the message a
                # second time. Only a chain that dedupes end to end may retry it.
                exc.idempotent = exc.idempotent and self.idempotent
                raise
            except DeliveryError as exc:
                exc.provider = exc.provider or provider.name
                if not exc.failover:
                    breaker.success()
                    self._count(provider.name, ATTEMPT_REJECTED)
                    raise
                if exc.retryable:
                    breaker.failure()
                    self._count(provider.name, ATTEMPT_FAILED)
                else:
                    breaker.release()
                    self._count(provider.name, ATTEMPT_UNSUPPORTED)
                errors.append(exc)
                continue
            except BaseException:
                # A bug or a cancellation mid-call: nothing says it was not sent.
                breaker.release()
                raise
            breaker.success()
            self._count(provider.name, ATTEMPT_ACCEPTED)
            if accepted is None:
                return Accepted(provider.name)
            return accepted
        self._give_up(errors, skipped)

    def _give_up(self, errors: list[DeliveryError], skipped: bool) -> NoReturn:
        """No provider took it: retryable if any provider might take it later."""
        retryable = skipped or any(e.retryable for e in errors)
        if errors:
            last = errors[-1]
            reason = (
                last.reason if len(errors) == 1 else f"all providers failed; last: {last.reason}"
            )
            raise DeliveryError(retryable, reason, failover=False, provider=last.provider)
        raise DeliveryError(True, "all providers skipped (circuit open)", failover=False)

    def _count(self, provider: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.provider_attempt(provider, outcome)


__all__ = [
    "ATTEMPT_ACCEPTED",
    "ATTEMPT_FAILED",
    "ATTEMPT_REJECTED",
    "ATTEMPT_SKIPPED",
    "ATTEMPT_UNKNOWN",
    "ATTEMPT_UNSUPPORTED",
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
    "FailoverMetrics",
    "FailoverProvider",
]
