"""ExportMyData: everything held about an account, for its owner (PIPL Art. 45, SECURITY.md I4).

The document follows the published schema `docs/export-schema.json`
(`EXPORT_SCHEMA`); its sections are the profile, identifiers, channels,
real-name status (documents by reference: the owner downloads each through
`PrivacyService.StreamMyDocument`), consents, sessions, security events (the
audit records the account acted in or that name it, its sessions or its
documents), disclosures to business systems and messages sent. Personal data is
decrypted for the owner; secrets are not data about the person and stay out:
password hash, TOTP secret and recovery codes (only whether a second factor is
enrolled), refresh tokens, codes, message texts.

In order:

1. The request's shape: a ticket is required (InvalidArgument on `ticket`).
2. The account's daily budget (`privacy.export`, rolling 24 h; RateLimited).
   A refusal later in the flow refunds it, so only exports delivered count.
3. Re-authentication: a live EXPORT_DATA ticket (a code verified moments ago,
   the ticket lives at most the ticket lifetime) for the account's own phone
   (SMS) or email (EMAIL); anything else is TicketInvalid on `ticket`. It is
   used up before the document is built, so one code yields one export.
4. The document, read section by section from each capability's own store.
5. The audit record `privacy.export` (target the account); a refused export
   is audited too, with its reason. Nothing is written besides the audit
   record and the ticket's consumption, so no unit of work is needed.

Nothing of another account can enter: every section is read by this
account's id, its own sessions and documents, or (messages) by the blind index
of its own phone and email, counted only from the time the account bound them,
so a recycled number does not bring its former holder's messages along.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from xiaohe.identity.server.accounts.models import AccountCredentials, PersonalData
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Purpose
from xiaohe.identity.server.codes.tickets import TicketService
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.delivery.lifecycle import DeliveryLog
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument, NotFound
from xiaohe.identity.server.flows.channels import own_channel_ticket
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.privacy.disclosures import DisclosureLog
from xiaohe.identity.server.privacy.requests import RightsRequests
from xiaohe.identity.server.ratelimit.limiter import RateLimiter, Reservation
from xiaohe.identity.server.realname.documents import DocumentInfo, DocumentService
from xiaohe.identity.server.realname.submissions import SubmissionStore
from xiaohe.identity.server.review.cases import ReviewCases
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.shared.page_tokens import MAX_PAGE_SIZE
from xiaohe.identity.server.totp.service import TotpService

logger = logging.getLogger(__name__)

EXPORT_SCHEMA: Final = "xiaohe-export/1"
"""The `schema` of every export document; `docs/export-schema.json` describes it."""

EXPORT_ACTION: Final = "privacy.export"
"""Audit action of an export (target: the account id), and the name of its rate limit."""

DOWNLOAD_RPC: Final = "xiaohe.identity.v1.PrivacyService/StreamMyDocument"
"""Where the owner downloads a document the export names."""

OWNER_READ: Final = "owner"
"""The `why` of a document read by its owner (audit outcome of `document.read`)."""

TICKET_FIELD: Final = "ticket"
DAY: Final = 86400.0
HOUR: Final = 3600.0

_AUDIT_LIMIT: Final = 10_000
"""At most this many security events (the newest); the audit log is kept ≥ 6 months."""


DOWNLOAD_ACTION: Final = "privacy.document_download"
DOWNLOADS_PER_HOUR: Final = 60
"""Document downloads per account and hour: a stolen access token cannot empty the store."""


def download_limit_key(account_id: str) -> str:
    """The Redis key of the account's document-download budget."""
    return f"xh:rl:{{acc:{account_id}}}:{DOWNLOAD_ACTION}"


def export_limit_key(account_id: str) -> str:
    """The Redis key of an account's export budget (hash-tagged for Redis Cluster)."""
    return f"xh:rl:{{acc:{account_id}}}:{EXPORT_ACTION}"


@dataclass(frozen=True)
class ExportCommand:
    """The signed-in account asks for its data, with a fresh EXPORT_DATA ticket."""

    account_id: str
    ticket: str = field(repr=False)


@dataclass(frozen=True)
class DocumentDownload:
    """A document of the owner's: its metadata and its decrypted bytes, in pieces."""

    info: DocumentInfo
    chunks: AsyncIterator[bytes] = field(repr=False)


def _iso(at: float | None) -> str | None:
    """An epoch time as RFC 3339 UTC with microseconds, or None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


class ExportFlow:
    """Builds the export document (steps in the module docstring)."""

    def __init__(
        self,
        *,
        accounts: AccountService,
        tickets: TicketService,
        sessions: SessionService,
        consents: ConsentLedger,
        disclosures: DisclosureLog,
        audit_log: AuditLog,
        documents: DocumentService,
        submissions: SubmissionStore,
        totp: TotpService,
        deliveries: DeliveryLog,
        blind_index: BlindIndex,
        limiter: RateLimiter,
        clock: Clock,
        per_account_day: int,
        audit: AuditSink | None = None,
        cases: ReviewCases | None = None,
        requests: RightsRequests | None = None,
        downloads_per_hour: int = DOWNLOADS_PER_HOUR,
    ) -> None:
        self._accounts = accounts
        self._tickets = tickets
        self._sessions = sessions
        self._consents = consents
        self._disclosures = disclosures
        self._audit_log = audit_log
        self._documents = documents
        self._submissions = submissions
        self._totp = totp
        self._deliveries = deliveries
        self._blind = blind_index
        self._limiter = limiter
        self._clock = clock
        self._per_account_day = per_account_day
        self._audit = audit
        self._cases = cases
        self._requests = requests
        self._downloads_per_hour = downloads_per_hour

    def __repr__(self) -> str:
        return "ExportFlow()"

    async def export(self, cmd: ExportCommand) -> dict[str, Any]:
        """The export document of `cmd.account_id` (steps 1-5 of the module docstring)."""
        if not cmd.ticket.strip():
            raise InvalidArgument(
                FieldViolation(TICKET_FIELD, "is required: an EXPORT_DATA ticket")
            )
        try:
            reservation = await self._limiter.acquire(
                EXPORT_ACTION,
                export_limit_key(cmd.account_id),
                self._per_account_day,
                DAY,
                self._clock.now(),
            )
            try:
                data = await self._accounts.get_personal_data(cmd.account_id)
                await self._reauthenticate(cmd.ticket, data)
                document = await self._document(cmd.account_id, data)
            except Exception:
                # Nothing was handed out: a refused ticket or a store that failed while the
                # document was read costs the person none of the day's exports.
                await self._refund(reservation)
                raise
            if self._audit is not None:
                await self._audit.record(EXPORT_ACTION, cmd.account_id, "ok")
        except Exception as exc:
            await record_quietly(
                self._audit, EXPORT_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return document

    async def document(self, account_id: str, document_id: str) -> DocumentDownload:
        """One of the account's own documents for download: NotFound for any other (an
        unknown id and another's document answer alike); the read is audited. Every
        attempt counts against the account's hourly budget (RateLimited past it)."""
        await self._limiter.acquire(
            DOWNLOAD_ACTION,
            download_limit_key(account_id),
            self._downloads_per_hour,
            HOUR,
            self._clock.now(),
        )
        info = await self._documents.info(document_id)
        if info is None or not hmac.compare_digest(
            info.owner.encode("utf-8"), account_id.encode("utf-8")
        ):
            raise NotFound("no such document of this account")
        return DocumentDownload(
            info=info,
            chunks=self._documents.chunks(document_id, reader=account_id, why=OWNER_READ),
        )

    async def _refund(self, reservation: Reservation) -> None:
        """Give back the budget of an export that was refused (a failure here is only logged)."""
        try:
            await self._limiter.release(reservation)
        except Exception as exc:
            logger.warning("refunding an export budget failed: %s", type(exc).__name__)

    async def _reauthenticate(self, ticket: str, data: PersonalData) -> None:
        """Step 3: use up the EXPORT_DATA ticket if it is for the account's phone or email."""
        proof = await own_channel_ticket(
            self._tickets, ticket, purpose=Purpose.EXPORT_DATA, field_name=TICKET_FIELD, data=data
        )
        await proof.consume(self._tickets)

    async def _document(self, account_id: str, data: PersonalData) -> dict[str, Any]:
        """Step 4: every section, read by this account's id."""
        credentials = await self._accounts.get_credentials(account_id)
        bound = await self._accounts.identifiers_of(account_id)
        documents = await self._documents.owned_by(account_id)
        sessions = await self._sessions.history(account_id)
        targets = [s.session_id for s in sessions] + [d.document_id for d in documents]
        return {
            "schema": EXPORT_SCHEMA,
            "generated_at": _iso(self._clock.now()),
            "account_id": account_id,
            "profile": await self._profile(credentials, data),
            "identifiers": _identifiers(bound, credentials.login_name, data),
            "channels": _channels(credentials, data),
            "real_name": await self._real_name(account_id, credentials.real_name_level, documents),
            "consents": [
                {
                    "consent_id": c.consent_id,
                    "purpose": c.purpose,
                    "action": c.action,
                    "policy_version": c.policy_version,
                    "at": _iso(c.accepted_at),
                    "client_id": c.client_id,
                    "channel": c.channel,
                    "ip_masked": c.ip_masked,
                }
                for c in await self._consents.of_account(account_id)
            ],
            "sessions": [
                {
                    "session_id": s.session_id,
                    "client_id": s.client_id,
                    "audience": s.audience,
                    "amr": list(s.amr),
                    "ip_masked": s.ip_masked,
                    "user_agent": s.user_agent,
                    "created_at": _iso(s.created_at),
                    "last_used_at": _iso(s.last_used_at),
                    "ended_at": _iso(s.revoked_at),
                    "end_reason": s.revoke_reason,
                }
                for s in sessions
            ],
            "security_events": [
                {
                    "seq": r.seq,
                    "at": _iso(r.at.timestamp()),
                    "action": r.action,
                    "target": r.target,
                    "outcome": r.outcome,
                    "client_id": r.actor_client,
                }
                for r in await self._audit_log.concerning(account_id, targets, _AUDIT_LIMIT)
            ],
            "disclosures": await self._all_disclosures(account_id),
            "messages": await self._messages(bound, data),
            "review_cases": await self._review_cases(account_id),
            "rights_requests": await self._rights_requests(account_id),
        }

    async def _profile(self, credentials: AccountCredentials, data: PersonalData) -> dict[str, Any]:
        """The account and its decrypted profile; of the second factor only whether it is on."""
        return {
            "subject_type": str(credentials.subject_type.value),
            "login_name": credentials.login_name,
            "status": str(credentials.status),
            "created_at": _iso(credentials.created_at),
            "accepted_policy_version": credentials.accepted_policy_version,
            "real_name_level": credentials.real_name_level,
            "name": data.name,
            "id_type": data.id_type.name,
            "id_number": data.id_number,
            "organization_name": data.organization_name,
            "uscc": data.uscc,
            "organization_type": data.organization_type,
            "representative_type": data.representative_type,
            "representative_name": data.representative_name,
            "representative_id_type": data.representative_id_type.name,
            "representative_id_number": data.representative_id_number,
            "totp_enrolled": await self._totp.is_enrolled(credentials.account_id),
        }

    async def _review_cases(self, account_id: str) -> list[dict[str, Any]]:
        """Cases about the account: what was submitted and how it was decided; reviewers'
        identities and their internal notes stay out."""
        if self._cases is None:
            return []
        return [
            {
                "case_id": c.case_id,
                "kind": c.kind.value,
                "state": c.state.value,
                "opened_at": _iso(c.summary.opened_at),
                "decided_at": _iso(c.summary.decided_at),
                "fields": dict(c.fields),
                "document_ids": list(c.document_ids),
                "reason": c.final_reason,
            }
            for c in await self._cases.about(account_id)
        ]

    async def _rights_requests(self, account_id: str) -> list[dict[str, Any]]:
        """The person's rights requests, newest first, with the operator's answers."""
        if self._requests is None:
            return []
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self._requests.of_account(
                account_id, page_size=MAX_PAGE_SIZE, page_token=token
            )
            found += [
                {
                    "request_id": r.request_id,
                    "kind": r.kind.value,
                    "state": r.state.value,
                    "detail": r.detail,
                    "filed_at": _iso(r.filed_at),
                    "due_on": r.due_on.isoformat(),
                    "outcome": r.outcome.value if r.outcome is not None else None,
                    "note": r.note,
                    "resolved_at": _iso(r.resolved_at),
                }
                for r in page.requests
            ]
            token = page.next_page_token
            if not token:
                return found

    async def _real_name(
        self, account_id: str, level: int, documents: list[DocumentInfo]
    ) -> dict[str, Any]:
        """Submissions with their decrypted details, and documents by reference."""
        submissions = []
        for s in await self._submissions.of_account(account_id):
            submissions.append(
                {
                    "submission_id": s.submission_id,
                    "subject_type": s.subject_type,
                    "state": s.state.value,
                    "level": s.level,
                    "verifier": s.verifier,
                    "reason": s.reason,
                    "details": await self._submissions.details(s),
                    "document_ids": list(s.document_ids),
                    "submitted_at": _iso(s.submitted_at),
                    "decided_at": _iso(s.decided_at),
                }
            )
        return {
            "level": level,
            "submissions": submissions,
            "documents": [
                {
                    "document_id": d.document_id,
                    "kind": d.kind,
                    "content_type": d.content_type,
                    "size": d.size,
                    "file_name": d.file_name,
                    "uploaded_at": _iso(d.created_at),
                    "download": DOWNLOAD_RPC,
                }
                for d in documents
            ],
        }

    async def _all_disclosures(self, account_id: str) -> list[dict[str, Any]]:
        """Every disclosure of the account, newest first (all pages)."""
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self._disclosures.page(
                account_id, page_size=MAX_PAGE_SIZE, page_token=token
            )
            found.extend(
                {
                    "client_id": d.client_id,
                    "fields": list(d.fields),
                    "masked": list(d.masked),
                    "purpose": d.purpose,
                    "at": _iso(d.at),
                }
                for d in page.disclosures
            )
            token = page.next_page_token
            if not token:
                return found

    async def _messages(
        self, bound: list[tuple[str, float]], data: PersonalData
    ) -> list[dict[str, Any]]:
        """Messages to the account's phone and email since it bound them (no texts: codes)."""
        since: Mapping[str, float] = dict(bound)
        recipients = [
            (self._blind.compute(kind, value), since[kind])
            for kind, value in (("phone", data.phone), ("email", data.email))
            if value and kind in since
        ]
        return [
            {
                "message_id": m.message_id,
                "channel": m.channel,
                "purpose": m.purpose,
                "status": m.status,
                "delivery": m.delivery,
                "created_at": _iso(m.created_at),
                "sent_at": _iso(m.sent_at),
            }
            for m in await self._deliveries.sent_to(recipients)
        ]


def _identifiers(
    bound: list[tuple[str, float]], login_name: str, data: PersonalData
) -> list[dict[str, Any]]:
    """Each identifier the account holds, with its value and when it was bound."""
    values = {
        "login_name": login_name,
        "phone": data.phone,
        "email": data.email,
        "id_number": data.id_number or data.representative_id_number,
        "uscc": data.uscc,
    }
    return [
        {"kind": kind, "value": values.get(kind, ""), "bound_at": _iso(at)} for kind, at in bound
    ]


def _channels(credentials: AccountCredentials, data: PersonalData) -> list[dict[str, Any]]:
    """The phone and email codes and notices go to, with when each last changed."""
    found: list[dict[str, Any]] = []
    if data.phone:
        found.append(
            {
                "channel": "phone",
                "value": data.phone,
                "changed_at": _iso(credentials.phone_changed_at),
                "stale": credentials.phone_stale_at is not None,
            }
        )
    if data.email:
        found.append(
            {
                "channel": "email",
                "value": data.email,
                "changed_at": _iso(credentials.email_changed_at),
                "stale": False,
            }
        )
    return found


__all__ = [
    "DOWNLOAD_RPC",
    "EXPORT_ACTION",
    "EXPORT_SCHEMA",
    "DocumentDownload",
    "ExportCommand",
    "ExportFlow",
    "export_limit_key",
]
