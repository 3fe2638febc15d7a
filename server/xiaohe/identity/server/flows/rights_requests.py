"""Rights requests: filing, the person's list, the operators' queue and resolution (issue 14).

The privacy policy (五, 十一) promises that a person may ask to see, copy,
correct or delete their data, withdraw a consent or complain, and gets a reply
within 15 working days. This flow records each request with its due date and
lets operators answer it; what answering means (an export, a correction, a
deactivation) is done by the other flows, and the request records the outcome.

Filing (`PrivacyService.FileRequest`, the signed-in person):

1. Check input: a kind, a free text of at most `MAX_DETAIL_CHARS` characters
   (InvalidArgument on `kind` / `detail`).
2. At most `MAX_OPEN_PER_ACCOUNT` open requests per account (FailedPrecondition):
   requests are answered by people, and one account must not bury the queue. The
   count is taken in step 4's unit of work, with the account's filings serialised,
   so concurrent filings cannot pass it.
3. Due date: 15 working days from the filing day in Asia/Shanghai
   (`privacy/calendar.py`). A year the calendar does not cover is counted as
   weekends only, logged as a warning and counted in a metric, so an operator
   knows to install that year's file.
4. One unit of work: the request (its text sealed under the account's data key)
   and the audit record `privacy.request.file` (target: the request id) commit
   together. A refusal is audited too, quietly.

Resolving (`AdminService.ResolveRequest`, an operator's client with the admin
grant): an outcome, and a note (required for REFUSED: the person must be told
why, PIPL Art. 50). Only an open request can be resolved (FailedPrecondition
otherwise, also for the loser of two concurrent resolutions); the change and
the audit record `privacy.request.resolve` commit together.

Overdue: a request is late from the midnight after its due date while it is
open. `refresh_overdue` counts them into the gauge `xiaohe_privacy_requests_overdue`
(each worker refreshes it every `privacy_overdue_refresh_seconds`); the CLI
`xiaohe-identity requests list --overdue` lists them.

Nothing here is logged with the texts: only ids, kinds and counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Protocol

from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from xiaohe.identity.server.privacy.calendar import WorkingCalendar
from xiaohe.identity.server.privacy.requests import (
    REQUEST_ID_SHAPE,
    NewRightsRequest,
    Outcome,
    RequestKind,
    RequestPage,
    RequestState,
    RightsRequest,
    RightsRequests,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

FILE_ACTION: Final = "privacy.request.file"
RESOLVE_ACTION: Final = "privacy.request.resolve"
MAX_DETAIL_CHARS: Final = 2000
"""Longest free text of a request, and of an operator's note."""
MAX_OPEN_PER_ACCOUNT: Final = 20
MAX_CLIENT_ID_CHARS: Final = 64


class RequestMetrics(Protocol):
    """What the flow reports (`observability.metrics.Metrics`)."""

    def privacy_requests_overdue(self, count: int) -> None:
        """Set the number of open requests past their due date."""
        ...

    def privacy_calendar_missing(self) -> None:
        """Count one due date computed partly without a calendar file."""
        ...


@dataclass(frozen=True)
class FileRequestCommand:
    """The signed-in account files a request through a client."""

    account_id: str
    kind: RequestKind
    detail: str
    client_id: str


@dataclass(frozen=True)
class ResolveRequestCommand:
    """An operator's client answers a request."""

    request_id: str
    outcome: Outcome
    note: str
    client_id: str


def _check_text(name: str, text: str) -> str:
    """The text without surrounding blanks; InvalidArgument on `name` when too long."""
    if len(text) > MAX_DETAIL_CHARS:
        raise InvalidArgument(FieldViolation(name, f"at most {MAX_DETAIL_CHARS} characters"))
    if "\x00" in text:
        raise InvalidArgument(FieldViolation(name, "must not contain NUL characters"))
    return text.strip()


class RightsRequestFlow:
    """Files, lists and resolves rights requests (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        requests: RightsRequests,
        calendar: WorkingCalendar,
        clock: Clock,
        audit: AuditSink | None = None,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self._uow = uow
        self._requests = requests
        self._calendar = calendar
        self._clock = clock
        self._audit = audit
        self._metrics = metrics

    def __repr__(self) -> str:
        return "RightsRequestFlow()"

    async def file(self, cmd: FileRequestCommand) -> RightsRequest:
        """Record a request with its due date; returns it."""
        detail = _check_text("detail", cmd.detail)
        request_id = self._requests.new_id()
        try:
            now = self._clock.now()
            due = self._calendar.due_date(now)
            if due.uncovered_years:
                logger.warning(
                    "no working-day calendar for %s: due date counted with weekends only",
                    ", ".join(str(y) for y in due.uncovered_years),
                )
                if self._metrics is not None:
                    self._metrics.privacy_calendar_missing()
            async with self._uow.begin():
                # Counted in the unit of work that inserts: concurrent filings wait here.
                open_now = await self._requests.count_open_for_filing(cmd.account_id)
                if open_now >= MAX_OPEN_PER_ACCOUNT:
                    raise FailedPrecondition(
                        f"at most {MAX_OPEN_PER_ACCOUNT} requests may be open at once; "
                        "wait for the answers to the open ones"
                    )
                await self._requests.add(
                    NewRightsRequest(
                        request_id=request_id,
                        account_id=cmd.account_id,
                        kind=cmd.kind,
                        detail=detail,
                        client_id=cmd.client_id[:MAX_CLIENT_ID_CHARS],
                        filed_at=now,
                        due_on=due.due_on,
                        due_at=due.due_at,
                    )
                )
                if self._audit is not None:
                    await self._audit.record(FILE_ACTION, request_id, "ok")
        except Exception as exc:
            await record_quietly(self._audit, FILE_ACTION, request_id, outcome_of(exc), logger)
            raise
        logger.info("rights request %s filed (%s)", request_id, cmd.kind.value)
        return await self._requests.get(request_id)

    async def list_mine(self, account_id: str, *, page_size: int, page_token: str) -> RequestPage:
        """The account's own requests, newest first."""
        return await self._requests.of_account(
            account_id, page_size=page_size, page_token=page_token
        )

    async def queue(
        self,
        *,
        state: RequestState | None,
        overdue_only: bool,
        page_size: int,
        page_token: str,
    ) -> RequestPage:
        """Requests by due date for operators: of one state (or any), or only the late ones."""
        return await self._requests.queue(
            state=state,
            late_at=self._clock.now() if overdue_only else None,
            page_size=page_size,
            page_token=page_token,
        )

    async def resolve(self, cmd: ResolveRequestCommand) -> RightsRequest:
        """Answer an open request; returns it resolved."""
        if not REQUEST_ID_SHAPE.fullmatch(cmd.request_id):
            # Checked first: the id becomes the audit target, and a caller's text must not.
            raise InvalidArgument(
                FieldViolation("request_id", "is not a request id (rrq_ and 24 hex digits)")
            )
        note = _check_text("note", cmd.note)
        if cmd.outcome is Outcome.REFUSED and not note:
            raise InvalidArgument(
                FieldViolation("note", "a refusal must say why (it is shown to the person)")
            )
        try:
            async with self._uow.begin():
                request = await self._requests.get(cmd.request_id)
                if request.state is not RequestState.OPEN or not await self._requests.resolve(
                    request,
                    outcome=cmd.outcome,
                    note=note,
                    resolved_by=cmd.client_id[:MAX_CLIENT_ID_CHARS],
                    at=self._clock.now(),
                ):
                    raise FailedPrecondition("the request is resolved already")
                if self._audit is not None:
                    await self._audit.record(RESOLVE_ACTION, cmd.request_id, cmd.outcome.value)
        except Exception as exc:
            await record_quietly(
                self._audit, RESOLVE_ACTION, cmd.request_id, outcome_of(exc), logger
            )
            raise
        logger.info("rights request %s resolved (%s)", cmd.request_id, cmd.outcome.value)
        return await self._requests.get(cmd.request_id)

    def is_overdue(self, request: RightsRequest) -> bool:
        """Whether the request is open and past its due date now."""
        return request.overdue_at(self._clock.now())

    async def count_overdue(self) -> int:
        """How many requests are open past their due date now."""
        return await self._requests.count_late(self._clock.now())

    async def refresh_overdue(self) -> int:
        """Count the overdue requests into the gauge; returns the count."""
        count = await self.count_overdue()
        if self._metrics is not None:
            self._metrics.privacy_requests_overdue(count)
        return count


__all__ = [
    "FILE_ACTION",
    "MAX_DETAIL_CHARS",
    "MAX_OPEN_PER_ACCOUNT",
    "RESOLVE_ACTION",
    "FileRequestCommand",
    "RequestMetrics",
    "ResolveRequestCommand",
    "RightsRequestFlow",
]
