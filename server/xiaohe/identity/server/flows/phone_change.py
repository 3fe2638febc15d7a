"""Changing the bound phone (`AccountService.ChangePhone`, privacy policy 一.6, SECURITY.md H1).

The account is named by login name, USCC or ID number (or is the signed-in
caller's). The new phone is proven by a BIND_PHONE ticket, and the person by one
of: (a) a CHANGE_PHONE ticket of the bound phone; (b) a CHANGE_PHONE ticket of the
bound email; (c) manual review with identity documents: a case a reviewer decides
(below, "By manual review"). An unknown identifier and a proof for another account's
channel answer alike (TicketInvalid). A new phone bound to another account is
ALREADY_EXISTS without saying whose; two concurrent changes of one account:
exactly one wins (`AccountService.replace_contact`).

Afterwards, in the same unit of work: the old phone and the email get the
`phone_changed` notice (no code, the new number masked), every other session ends
(T3), the change is audited; and for `phone_change_cooling_off_seconds` (24 h by
default) another phone change, and recovery through the new phone, are refused.
The same window applies to the email as a proof: an address bound or replaced
within it does not prove a phone change (a session thief who managed to bind an
email cannot use it at once to take the phone, and the owner has the window in
which the `email_changed` notice reaches them).

In order, each step only if the previous one passed:

1. Manual review takes its own path (below).
2. Shapes. The identifier (required unless signed in; a login name, USCC or ID
   number, never a phone or an email: those are what is being proven), the new
   phone and both tickets; all violations in one InvalidArgument. A non-empty
   identifier that fails its kind's rules is not a violation but an unknown
   account (as at login: it cannot belong to anyone, and the answer must not
   depend on what is registered).
3. The new phone's ticket is checked, not consumed: BIND_PHONE, SMS, the new
   phone, or TicketInvalid on `new_phone_ticket`.
4. The account: the identifier's, or the signed-in caller's. An identifier that
   names another account than the signed-in one, or an account that is not
   active, is treated as unknown.
5. The proof. Its ticket is checked by purpose and channel only (CHANGE_PHONE,
   SMS or EMAIL), which says what it proves (its destination); the account
   holding that destination now is found through the blind index, and the proof
   holds only if that is the account of step 4 (ids compared in constant time),
   as ResetPassword does (`flows/passwords.py`). Nothing is decrypted before
   that: an unknown identifier, and an identifier whose account the ticket does
   not prove, each cost exactly one identifier lookup, one ticket check and one
   holder lookup, so neither the answer nor the work tells whether an identifier
   is registered. Both are then presented once more against no destination,
   which the ticket service counts as a mismatch (the third destroys the
   ticket, so a stolen ticket cannot be tried against identifier after
   identifier), and both answer the same TicketInvalid on the proof field,
   leave the ticket usable for its own account and send nothing.
6. State, now that the person has proven the account (its personal data is
   read only now): the new phone being the bound one already, a phone changed
   within the cooling-off window (`AccountCredentials.phone_changed_at`), or,
   for a proof by email, an email bound or replaced within the same window
   (`AccountCredentials.email_changed_at`), is FailedPrecondition.
7. A new phone held by another account is ALREADY_EXISTS on `new_phone`; both
   tickets stay usable (the caller proved the phone is theirs, and may pick
   another).
8. Both tickets are consumed (Redis, before the unit of work). Of two calls with
   one ticket, one gets past this step; the other gets TicketInvalid.
9. One unit of work: `replace_contact` (it locks the row and re-reads the phone:
   of two concurrent changes with different tickets the second finds it changed
   and gets Conflict, so the account ends with exactly one new phone), the other
   sessions revoked (the caller's own kept when signed in; published to the
   revocation list once this commits), the notices queued, the audit record.
   A fault anywhere in it leaves the phone, identifiers, sessions and outbox as
   they were.

Refusals after step 2 are audited as `account.phone.change` (target the account
id, or `unknown`) outside the unit of work; the success as
`account.phone.change` with the proof as its outcome (`old_phone`, `email`).

By manual review (人工核验). Without a ticket of the old phone or the email, the
person names the account, proves the new phone (BIND_PHONE ticket) and gives
identity documents uploaded either by the account or with the new phone's
ticket (`DocumentService.info(...).owner`). A new phone bound to any account,
this one included, is ALREADY_EXISTS (it names no account). The new phone's
ticket is consumed and, in one unit of work, a `phone_change` case is opened
(fields: the account's identity and login name for the reviewer to compare
with the documents, and the new phone) and audited (`review_opened`); the
answer carries the case id and nothing has changed yet. An identifier that names
no active account opens a case too, with no account: the caller cannot tell
(the reviewer sees "no matching account" and rejects). On approval
(`apply_case`, inside the decision's unit of work) the change is applied as
step 9 applies a self-service change, after checking again that the account
is active, outside its cooling-off window and that the new phone is still
free; if not, the approval becomes a rejection with that reason. A rejection
sends the new phone the `review_rejected` notice, which reveals nothing.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    AccountStatus,
    SubjectType,
)
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketClaims, TicketConsumer
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    TicketInvalid,
    Unimplemented,
)
from xiaohe.identity.server.flows.channels import PresentedTicket, SessionRevoker
from xiaohe.identity.server.flows.manual_review import (
    DOCUMENTS_FIELD,
    REVIEW_REJECTED_NOTICE,
    ReviewQueue,
    check_document_ids,
    check_documents,
    identity_fields,
)
from xiaohe.identity.server.flows.review import Applied, ReviewDocuments
from xiaohe.identity.server.review.models import ReviewCase
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    classify,
    mask_phone,
    normalize_identifier_or_none,
    today_in_china,
)
from xiaohe.identity.server.shared.validation import (
    MAX_IDENTIFIER_CHARS,
    UNKNOWN_SUBJECT,
    Violations,
    check_ticket_shape,
    phone_field,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

CHANGE_PHONE_ACTION: Final = "account.phone.change"
DEFAULT_COOLING_OFF_SECONDS: Final = 86400
NAMING_KINDS: Final = frozenset(
    {IdentifierKind.LOGIN_NAME, IdentifierKind.USCC, IdentifierKind.ID_NUMBER}
)
"""What may name the account (privacy policy 一.6): never the channels being proven."""


class PhoneProof(StrEnum):
    """How the person proves they hold the account today."""

    OLD_PHONE = "old_phone"
    EMAIL = "email"
    MANUAL_REVIEW = "manual_review"


_PROOF_FIELDS: Final = {PhoneProof.OLD_PHONE: "old_phone_ticket", PhoneProof.EMAIL: "email_ticket"}
_PROOF_CHANNELS: Final = {PhoneProof.OLD_PHONE: Channel.SMS, PhoneProof.EMAIL: Channel.EMAIL}


@dataclass(frozen=True)
class ChangePhoneCommand:
    """Change the bound phone of the account named by `identifier` (or of `account_id`)."""

    identifier: str = field(repr=False)
    identifier_kind: IdentifierKind
    account_id: str
    """The signed-in caller's account, or "" (then `identifier` names it)."""
    session_id: str
    new_phone: str = field(repr=False)
    new_phone_ticket: str = field(repr=False)
    proof: PhoneProof
    proof_ticket: str = field(repr=False)
    ip: str
    document_ids: tuple[str, ...] = ()
    """Manual review: the identity documents."""


@dataclass(frozen=True)
class PhoneChanged:
    """The outcome of a phone change (or of opening its review case: `review_case_id`)."""

    phone_masked: str
    sessions_ended: int
    review_case_id: str = ""


@dataclass(frozen=True)
class _ValidChange:
    """A ChangePhone request after step 2."""

    naming: tuple[IdentifierKind, str] | None
    """The normalised identifier, None when absent or malformed."""
    new_phone: str = field(repr=False)
    proof_field: str
    proof_channel: Channel


class PhoneChangeFlow:
    """Changes bound phones (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        tickets: TicketConsumer,
        sessions: SessionRevoker,
        notices: Notices,
        clock: Clock,
        cooling_off_seconds: int = DEFAULT_COOLING_OFF_SECONDS,
        audit: AuditSink | None = None,
        allowed_country_codes: Collection[str] = ("86",),
        review_queue: ReviewQueue | None = None,
        documents: ReviewDocuments | None = None,
    ) -> None:
        if cooling_off_seconds < 0:
            raise ValueError("cooling_off_seconds must not be negative")
        self._uow = uow
        self._accounts = accounts
        self._tickets = tickets
        self._sessions = sessions
        self._notices = notices
        self._clock = clock
        self._cooling_off = cooling_off_seconds
        self._audit = audit
        self._allowed_country_codes = tuple(allowed_country_codes)
        self._review_queue = review_queue
        self._documents = documents

    def __repr__(self) -> str:
        return "PhoneChangeFlow()"

    async def change(self, cmd: ChangePhoneCommand) -> PhoneChanged:
        """Change the phone (steps and their reasons in the module docstring).

        Raises InvalidArgument, TicketInvalid
        (`new_phone_ticket`, or the proof field for an unknown account as for a
        proof of another account's channel), FailedPrecondition (the same phone,
        a phone changed within the cooling-off window, or a proof by an email
        bound within it), AlreadyExists (`new_phone`), Conflict (a concurrent
        change won) or Unavailable.
        """
        if cmd.proof is PhoneProof.MANUAL_REVIEW:
            return await self._open_review(cmd)
        valid = self._validate(cmd)
        target = UNKNOWN_SUBJECT
        try:
            new_phone_ticket = _new_phone_ticket(cmd, valid)
            await new_phone_ticket.check(self._tickets)
            account = await self._account(cmd, valid)
            if account is not None:
                target = account.account_id
            account = await self._proven(account, cmd.proof_ticket, valid)
            data = await self._accounts.get_personal_data(account.account_id)
            old_phone, email = data.phone, data.email
            proof_ticket = PresentedTicket(
                cmd.proof_ticket,
                valid.proof_field,
                Purpose.CHANGE_PHONE,
                valid.proof_channel,
                old_phone if valid.proof_channel is Channel.SMS else email,
            )
            self._check_state(account, old_phone, valid.new_phone, valid.proof_channel)
            if await self._accounts.taken_kinds([self._accounts.key("phone", valid.new_phone)]):
                raise AlreadyExists("new_phone")
            await proof_ticket.consume(self._tickets)
            await new_phone_ticket.consume(self._tickets)
            keep = cmd.session_id if cmd.account_id == account.account_id else ""
            try:
                async with self._uow.begin():
                    await self._accounts.replace_contact(
                        account.account_id, "phone", expected=old_phone, new=valid.new_phone
                    )
                    ended = await self._sessions.revoke_all(
                        account.account_id, RevokeReason.PHONE_CHANGE, keep=keep
                    )
                    await self._notices.send(
                        "phone_changed",
                        phone=old_phone,
                        email=email,
                        new_phone=mask_phone(valid.new_phone),
                    )
                    if self._audit is not None:
                        await self._audit.record(
                            CHANGE_PHONE_ACTION, account.account_id, cmd.proof.value
                        )
            except AlreadyExists:
                raise AlreadyExists("new_phone") from None  # bound elsewhere meanwhile
        except Exception as exc:
            await record_quietly(self._audit, CHANGE_PHONE_ACTION, target, outcome_of(exc), logger)
            raise
        return PhoneChanged(phone_masked=mask_phone(valid.new_phone), sessions_ended=ended)

    async def _open_review(self, cmd: ChangePhoneCommand) -> PhoneChanged:
        """Manual review: check, consume the new phone's ticket, open a case (module docstring)."""
        if self._review_queue is None or self._documents is None:
            raise Unimplemented("manual review is not available on this server")
        valid = self._validate(cmd)
        target = UNKNOWN_SUBJECT
        try:
            new_phone_ticket = _new_phone_ticket(cmd, valid)
            await new_phone_ticket.check(self._tickets)
            account = await self._account(cmd, valid)
            if account is not None:
                target = account.account_id
            owners = {self._documents.phone_owner(valid.new_phone)}
            if account is not None and cmd.account_id == account.account_id:
                # The account's own documents only for the account signed in: naming an
                # account must not let a stranger attach its stored scans.
                owners.add(account.account_id)
            await check_documents(self._documents, cmd.document_ids, owners, DOCUMENTS_FIELD)
            if await self._accounts.taken_kinds([self._accounts.key("phone", valid.new_phone)]):
                raise AlreadyExists("new_phone")
            fields: dict[str, str] = {"new_phone": valid.new_phone}
            subject = _subject_of(valid.naming)
            if account is not None:
                data = await self._accounts.get_personal_data(account.account_id)
                fields.update(identity_fields(account.subject_type, data))
                fields["login_name"] = account.login_name
                subject = account.subject_type
            await new_phone_ticket.consume(self._tickets)
            async with self._uow.begin():
                case_id = await self._review_queue.open_case(
                    kind="phone_change",
                    account_id=None if account is None else account.account_id,
                    subject_type=subject.value.lower(),
                    fields=fields,
                    document_ids=cmd.document_ids,
                    reference="",
                )
                if self._audit is not None:
                    await self._audit.record(CHANGE_PHONE_ACTION, target, "review_opened")
        except Exception as exc:
            await record_quietly(self._audit, CHANGE_PHONE_ACTION, target, outcome_of(exc), logger)
            raise
        return PhoneChanged(phone_masked="", sessions_ended=0, review_case_id=case_id)

    async def apply_case(
        self, case: ReviewCase, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> Applied:
        """A reviewer's final decision on a phone-change case, inside its unit of work.

        Approved: the change of step 9 (replace_contact, other sessions ended, the
        old phone and the email told, audited as `manual_review`), after the
        checks of step 6 and 7 are made again; one that fails now turns the
        approval into a rejection with its reason. Rejected: the new phone gets
        the `review_rejected` notice. FailedPrecondition when approving a case
        that matched no account.
        """
        new_phone = case.fields.get("new_phone", "")
        if not approved:
            return await self._reject_case(case, new_phone)
        if case.account_id is None:
            raise FailedPrecondition("the case matched no account: reject it")
        account = await self._accounts.get_credentials(case.account_id)
        data = await self._accounts.get_personal_data(case.account_id)
        refusal = await self._refusal_now(account, data.phone, new_phone)
        if refusal:
            await self._reject_case(case, new_phone)
            return Applied(rejected_because=refusal)
        try:
            await self._accounts.replace_contact(
                account.account_id, "phone", expected=data.phone, new=new_phone
            )
        except AlreadyExists:
            raise Conflict(
                "the new phone was bound to another account meanwhile: decide the case again"
            ) from None
        await self._sessions.revoke_all(account.account_id, RevokeReason.PHONE_CHANGE)
        await self._notices.send(
            "phone_changed", phone=data.phone, email=data.email, new_phone=mask_phone(new_phone)
        )
        if self._audit is not None:
            await self._audit.record(
                CHANGE_PHONE_ACTION, account.account_id, PhoneProof.MANUAL_REVIEW.value
            )
        return Applied()

    async def _refusal_now(
        self, account: AccountCredentials, old_phone: str, new_phone: str
    ) -> str:
        """Why the approved change cannot be made now ("" if it can)."""
        if account.status != AccountStatus.ACTIVE:
            return "the account is no longer active"
        if new_phone == old_phone:
            return "the new phone is the account's phone already"
        if self._cooling_off_left(account.phone_changed_at) > 0:
            return f"the account's phone was changed less than {self._hours} h ago"
        if await self._accounts.taken_kinds([self._accounts.key("phone", new_phone)]):
            return "the new phone was bound to another account meanwhile"
        return ""

    async def _reject_case(self, case: ReviewCase, new_phone: str) -> Applied:
        """A rejection: the new phone is told, nothing more (it names no account)."""
        if new_phone:
            await self._notices.send(REVIEW_REJECTED_NOTICE, phone=new_phone)
        if self._audit is not None:
            await self._audit.record(
                CHANGE_PHONE_ACTION, case.account_id or UNKNOWN_SUBJECT, "review_rejected"
            )
        return Applied()

    def _validate(self, cmd: ChangePhoneCommand) -> _ValidChange:
        """Step 2: shapes; InvalidArgument lists every violation."""
        v = Violations()
        naming: tuple[IdentifierKind, str] | None = None
        raw = cmd.identifier
        if not raw.strip():
            if not cmd.account_id:
                v.add("identifier", "must name the account: login name, USCC or ID number")
        elif len(raw) > MAX_IDENTIFIER_CHARS:
            v.add("identifier", f"must be at most {MAX_IDENTIFIER_CHARS} characters")
        else:
            kind = IdentifierKind(cmd.identifier_kind)
            if kind is not IdentifierKind.UNSPECIFIED and kind not in NAMING_KINDS:
                v.add("identifier_kind", "must be LOGIN_NAME, USCC or ID_NUMBER (or unspecified)")
            elif kind is IdentifierKind.UNSPECIFIED and classify(raw) not in NAMING_KINDS:
                v.add("identifier", "must be a login name, USCC or ID number")
            else:
                naming = self._normalise(raw, kind)
        new_phone = phone_field(v, "new_phone", cmd.new_phone, self._allowed_country_codes)
        check_ticket_shape(v, "new_phone_ticket", cmd.new_phone_ticket, required=True)
        if cmd.proof is PhoneProof.MANUAL_REVIEW:
            check_document_ids(v, DOCUMENTS_FIELD, cmd.document_ids)
            v.raise_if_any()
            return _ValidChange(naming, new_phone, DOCUMENTS_FIELD, Channel.SMS)
        proof_field = _PROOF_FIELDS[cmd.proof]
        check_ticket_shape(v, proof_field, cmd.proof_ticket, required=True)
        v.raise_if_any()
        return _ValidChange(
            naming=naming,
            new_phone=new_phone,
            proof_field=proof_field,
            proof_channel=_PROOF_CHANNELS[cmd.proof],
        )

    def _normalise(self, raw: str, kind: IdentifierKind) -> tuple[IdentifierKind, str] | None:
        """The normalised identifier, or None for one no account can hold (step 2)."""
        return normalize_identifier_or_none(
            kind,
            raw,
            allowed_country_codes=self._allowed_country_codes,
            today=today_in_china(self._clock),
        )

    async def _account(
        self, cmd: ChangePhoneCommand, valid: _ValidChange
    ) -> AccountCredentials | None:
        """Step 4: the active account the request is about, or None (unknown)."""
        account: AccountCredentials | None = None
        if cmd.identifier.strip():
            if valid.naming is not None:
                account = await self._accounts.find_credentials(*valid.naming)
            if account is not None and cmd.account_id and account.account_id != cmd.account_id:
                account = None  # signed in as one account, naming another
        elif cmd.account_id:
            try:
                account = await self._accounts.get_credentials(cmd.account_id)
            except NotFound:
                account = None
        if account is None or account.status != AccountStatus.ACTIVE:
            return None
        return account

    async def _proven(
        self, account: AccountCredentials | None, proof_ticket: str, valid: _ValidChange
    ) -> AccountCredentials:
        """Step 5: the account if the proof ticket proves it; TicketInvalid on the proof field
        otherwise (the same work and answer for an unknown account as for another's proof)."""
        claims = await self._proof_claims(proof_ticket, valid)
        kind = IdentifierKind.PHONE if valid.proof_channel is Channel.SMS else IdentifierKind.EMAIL
        holder = await self._accounts.find_credentials(kind, claims.destination)
        holder_id = "" if holder is None else holder.account_id
        if account is not None and hmac.compare_digest(
            holder_id.encode("utf-8"), account.account_id.encode("utf-8")
        ):
            return account
        # Counted as a mismatch of the ticket (against no destination, which none is bound to).
        unbound = PresentedTicket(
            proof_ticket, valid.proof_field, Purpose.CHANGE_PHONE, valid.proof_channel, ""
        )
        await unbound.check(self._tickets)
        raise TicketInvalid(field=valid.proof_field)  # unreachable: the check above refuses

    async def _proof_claims(self, proof_ticket: str, valid: _ValidChange) -> TicketClaims:
        """What a live CHANGE_PHONE ticket of the proof's channel proves (it stays usable)."""
        try:
            claims = await self._tickets.check(
                proof_ticket, purpose=Purpose.CHANGE_PHONE, channel=valid.proof_channel
            )
        except TicketInvalid:
            raise TicketInvalid(field=valid.proof_field) from None
        # Defence in depth: the ticket service matched these already.
        if (claims.purpose, claims.channel) != (Purpose.CHANGE_PHONE, valid.proof_channel):
            raise TicketInvalid(field=valid.proof_field)
        return claims

    def _check_state(
        self, account: AccountCredentials, old_phone: str, new_phone: str, proof: Channel
    ) -> None:
        """Step 6: FailedPrecondition for the bound phone itself, or inside a cooling-off window.

        The window (H1, issue 9) is counted from the last phone change or first
        binding: someone who has just taken over a phone, or an account through
        one, cannot immediately move the account on again, and recovery refuses
        a phone changed within the same window (flows/recovery.py). A proof by
        email is refused within the same window of the email's last change: an
        address bound by a session thief must not carry the phone away at once.
        """
        if new_phone == old_phone:
            raise FailedPrecondition(
                "the new phone is the phone bound already",
                [FieldViolation("new_phone", "is the phone bound already")],
            )
        remaining = self._cooling_off_left(account.phone_changed_at)
        if remaining > 0:
            raise FailedPrecondition(
                f"the bound phone was changed less than {self._hours} h ago; it can be "
                f"changed again in {math.ceil(remaining)} s"
            )
        if proof is not Channel.EMAIL:
            return
        remaining = self._cooling_off_left(account.email_changed_at)
        if remaining > 0:
            raise FailedPrecondition(
                f"the bound email was changed less than {self._hours} h ago; it can prove "
                f"a phone change in {math.ceil(remaining)} s"
            )

    @property
    def _hours(self) -> str:
        """The cooling-off window in hours, as messages give it."""
        return f"{self._cooling_off / 3600:g}"

    def _cooling_off_left(self, changed_at: float | None) -> float:
        """Seconds left of the cooling-off window started at `changed_at` (≤ 0: none)."""
        if changed_at is None:
            return 0.0
        return changed_at + self._cooling_off - self._clock.now()


def _subject_of(naming: tuple[IdentifierKind, str] | None) -> SubjectType:
    """The subject type an identifier suggests (a USCC names a legal person)."""
    if naming is not None and naming[0] is IdentifierKind.USCC:
        return SubjectType.LEGAL_PERSON
    return SubjectType.NATURAL_PERSON


def _new_phone_ticket(cmd: ChangePhoneCommand, valid: _ValidChange) -> PresentedTicket:
    """The BIND_PHONE ticket for the new phone, which every way of changing the phone needs."""
    return PresentedTicket(
        cmd.new_phone_ticket, "new_phone_ticket", Purpose.BIND_PHONE, Channel.SMS, valid.new_phone
    )


__all__ = [
    "CHANGE_PHONE_ACTION",
    "DEFAULT_COOLING_OFF_SECONDS",
    "NAMING_KINDS",
    "ChangePhoneCommand",
    "PhoneChangeFlow",
    "PhoneChanged",
    "PhoneProof",
    "ReviewQueue",
    "check_document_ids",
    "check_documents",
    "identity_fields",
]
