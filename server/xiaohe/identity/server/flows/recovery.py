"""Account recovery (`RecoveryService.RecoverAccount`, privacy policy 一.5).

A natural person gives real name, ID type and number; a legal person gives
organisation name and type, USCC (or organisation code), representative type,
name, ID type and number; both add a RECOVER_ACCOUNT ticket for the bound phone.
The account is the one holding that phone; its encrypted profile is compared
with every field it holds (never a plaintext column). A legal person's account
must hold at least the USCC and the representative's name and ID number to be
matched at all; one that holds none of them is pointed at manual review.

On a match: the masked login name, and a single-use password-reset grant for
`AccountService.ResetPassword`; the full login name goes to the bound phone by
SMS. No match answers the same way (a decoy masked name and a grant that opens
nothing), sends nothing, spends the ticket, and counts against the per-phone and
per-IP recovery limits. A phone changed within the cooling-off window cannot be
used to recover. Someone who lost the phone applies for manual review (below).

In order, each step only if the previous one passed:

1. Manual review as the proof takes its own path (below).
2. Shapes. Every field is normalised (NFKC, full-width digits, `x` → `X`) and
   validated; every field privacy policy 一.5 lists is required. All violations
   come in one InvalidArgument, named by the request's paths
   (`natural_person.id_number`, `legal_person.uscc`, ...). Nothing is spent yet.
3. The ticket is consumed: RECOVER_ACCOUNT, SMS, for the normalised phone, or
   TicketInvalid on `phone_ticket`. From here on the ticket is spent whatever
   the outcome, so every further attempt costs a fresh SMS code.
4. Limits, before anything is matched: `account.recover.ip` (per hour) and
   `account.recover.client` (per minute) for the caller, then
   `account.recover.phone` (per day) for the phone, keyed by its pseudonymous
   destination tag, never the number. A refusal refunds the windows already
   charged (RateLimited names the refusing one). Charging only after the ticket
   means a stranger without the phone cannot use up its recovery budget.
5. The account bound to the phone (blind-index lookup), its credentials and its
   decrypted profile. No account, a phone changed within
   `cooling_off_seconds`, an inactive account or the other kind of subject:
   no match (step 7).
6. An account that holds too little to be matched (a natural person without
   an ID number; a legal person without the USCC, the representative's name
   or ID number) → FailedPrecondition pointing at manual review. The caller
   has just proven control of the account's phone, so this tells them nothing
   about someone else.
7. Compare. Each field the account holds must equal the one given (NFKC,
   whitespace dropped, case folded, the middle dots of transliterated
   names unified; a 9-character organisation code is compared with characters
   9-17 of the held USCC), in constant time, all fields always compared.
8. Match: one unit of work queues the `login_name_reminder` notice (the full
   login name) to the bound phone and audits `account.recover` `matched`
   (target: the account id). Then, after the commit, the grant is stored.
   No match: `account.recover` `no_match` is audited (target: a keyed tag of
   the phone) and the decoy is answered.

Why the grant comes after the commit. The grant lives in Redis, which is not
part of the SQL transaction. Stored first, a unit of work that then failed
would leave a usable grant that nobody was told about (and whose notice was
never queued); stored after, a failed unit of work hands out nothing. If
storing the grant fails after the commit, the caller gets UNAVAILABLE while the
login-name notice is already queued: the person still learns the login name on
their phone and can ask again with a new code.

Why a no-match answers like a match. The response travels through front ends,
their logs and the browser; if its shape said "these details belong to the
account on this phone", it would be an oracle for whose name and ID number go
with which phone, exactly the data the platform must protect (PIPL). So a
no-match returns a decoy: a masked login name derived from a keyed pseudonym
of the phone (stable, so repeating an attempt does not give the decoy away by
changing) and a grant of a real grant's shape, whose tag part is stable per
phone like a real grant's is per account, and which opens nothing (it is
never stored; ResetPassword answers it like an expired ticket). The limits
and the ticket are spent exactly as on a match. What the decoy cannot hide,
and does not try to: the SMS. The full login name goes only to the bound
phone, so whoever holds that phone learns from the SMS arriving or not whether
the details matched. That person has proven control of the account's phone,
the channel the account itself trusts for recovery, and learns only whether
the details they typed are those of the account they can already reach; the
per-phone limit bounds how often they may try. Timing differs by one Redis
write and one outbox row (the grant and the notice), which likewise tells
only what the SMS tells the phone's holder.

By manual review (人工核验), for someone who lost the bound phone: the identity
as above, the phone the person holds now (`manual_review.new_phone`) with its
RECOVER_ACCOUNT ticket (or BIND_PHONE: RECOVER_ACCOUNT codes go only to phones an
account holds), and identity documents uploaded with that phone's ticket
(their owner is the phone's holder, `DocumentService.phone_owner`). Shapes are
checked, then the documents (someone else's and none at all answer alike),
then the ticket is consumed and the limits charged as in steps 3-4, keyed by
the new phone. The account is looked up by the identity itself (the ID number,
or the USCC, through the blind index) and compared as in step 7. A `recovery`
case opens whether or not anything matched, with the matched account or none,
in one unit of work with its audit record (`review_opened`, target the case);
the answer is the case id and nothing else, the same either way. On approval
(`apply_case`, in the decision's unit of work) the new phone is bound as a phone
change binds it (the old phone and the email told, every session ended), and
the login name goes to the new phone; the person then resets the password with
a RESET_PASSWORD code to it. If the account is no longer active, its phone
changed within the cooling-off window or the new phone is bound elsewhere by
then, the approval becomes a rejection with that reason. A rejection sends the
new phone the `review_rejected` notice. A case that matched no account cannot
be approved (FailedPrecondition tells the reviewer to reject it).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    AccountStatus,
    PersonalData,
    SubjectType,
)
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.digests import CodeDigests
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketConsumer
from xiaohe.identity.server.codes.tickets import TICKET_SECRET_BYTES, ticket_from_secret
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    TicketInvalid,
    Unimplemented,
)
from xiaohe.identity.server.flows.channels import PresentedTicket, SessionRevoker
from xiaohe.identity.server.flows.manual_review import (
    REVIEW_REJECTED_NOTICE,
    ReviewQueue,
    check_document_ids,
    check_documents,
)
from xiaohe.identity.server.flows.review import Applied, ReviewDocuments
from xiaohe.identity.server.ratelimit.callers import CallerBudget, CallerLimits
from xiaohe.identity.server.ratelimit.limiter import RateLimiter, Reservation
from xiaohe.identity.server.review.models import ReviewCase
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    IdType,
    mask_login_name,
    mask_phone,
    normalize,
    normalize_uscc_or_org_code,
    org_code_of_uscc,
    today_in_china,
)
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms
from xiaohe.identity.server.shared.validation import (
    MAX_NAME_CHARS,
    MAX_ORGANIZATION_NAME_CHARS,
    Violations,
    check_ticket_shape,
    free_text,
    id_number_field,
    phone_field,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

RECOVER_ACTION: Final = "account.recover"
"""Audit action, and rate-limit action of the caller windows (`.ip`, `.client`)."""

PHONE_POLICY: Final = "account.recover.phone"
"""Rate-limit policy of recoveries per phone and day."""

DAY: Final = 86400.0
DEFAULT_PER_CLIENT_MINUTE: Final = 600
"""Recoveries one client may relay per minute (no setting: it only bounds a runaway client)."""

DECOY_LABEL: Final = "xh.recovery.decoy.v1"
"""Pseudonym label of the decoy derived from a phone (its own use of the key)."""

MANUAL_REVIEW_MESSAGE: Final = (
    "this account holds too few identity details to be recovered with them: "
    "apply for manual review (人工核验) with identity documents"
)
MANUAL_REVIEW_UNAVAILABLE: Final = (
    "manual review is not available yet: recover with the bound phone's ticket, "
    "or contact customer service"
)

_DECOY_FIRST: Final = "abcdefghijklmnopqrstuvwxyz"
"""What a login name may start with (`normalize_login_name`: a letter, lowercased)."""
_DECOY_LAST: Final = "abcdefghijklmnopqrstuvwxyz0123456789_.-"
"""What a login name may end with: every character it may hold."""
_NAME_DOTS: Final = re.compile(r"[.\u00b7\u2022\u2027\u2219\u22c5\u30fb\uff0e\uff65]")

# The request's paths: the command is flat, the request nests its fields in a oneof.
_NATURAL = "natural_person."
_LEGAL = "legal_person."
_NEW_PHONE = "manual_review.new_phone"
_NEW_PHONE_TICKET = "manual_review.new_phone_ticket"
_DOCUMENTS = "manual_review.document_ids"


@dataclass(frozen=True)
class RecoverCommand:
    """What a person gives to find their account."""

    subject_type: SubjectType | None
    phone: str = field(repr=False)
    phone_ticket: str = field(repr=False)
    manual_review: bool
    name: str = field(default="", repr=False)
    id_type: IdType = IdType.UNSPECIFIED
    id_number: str = field(default="", repr=False)
    organization_name: str = ""
    organization_type: str = ""
    uscc: str = ""
    representative_type: str = ""
    representative_name: str = field(default="", repr=False)
    representative_id_type: IdType = IdType.UNSPECIFIED
    representative_id_number: str = field(default="", repr=False)
    client_id: str = ""
    ip: str = ""
    new_phone: str = field(default="", repr=False)
    """Manual review: the phone the person holds now, its ticket and the documents."""
    new_phone_ticket: str = field(default="", repr=False)
    document_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recovered:
    """The answer to a recovery, match or not (with manual review: only the case id)."""

    login_name_masked: str
    reset_grant: str = field(repr=False)
    expires_in: int
    review_case_id: str = ""


class RecoveryTickets(TicketConsumer, Protocol):
    """Verification tickets and grants (`codes.tickets.TicketService`)."""

    async def grant(self, account_id: str, purpose: Purpose, ttl: int | None = None) -> str:
        """A stored single-use ticket for `purpose` naming the account (channel ACCOUNT)."""
        ...


@dataclass(frozen=True)
class _Claim:
    """A recover request after normalisation and validation: who the person says they are."""

    subject_type: SubjectType
    phone: str = field(repr=False)
    name: str = field(default="", repr=False)
    id_type: IdType = IdType.UNSPECIFIED
    id_number: str = field(default="", repr=False)
    organization_name: str = ""
    organization_type: str = ""
    uscc: str = ""
    """A USCC (18 characters) or an organisation code (9)."""
    representative_type: str = ""
    representative_name: str = field(default="", repr=False)
    representative_id_type: IdType = IdType.UNSPECIFIED
    representative_id_number: str = field(default="", repr=False)


def decoy_login_name(first: int, last: int) -> str:
    """A masked login name from two pseudorandom bytes, as a real one masks.

    Its ends are drawn from what a login name may start and end with, so no
    character at either end tells a decoy from a real name.
    """
    return mask_login_name(
        _DECOY_FIRST[first % len(_DECOY_FIRST)] + _DECOY_LAST[last % len(_DECOY_LAST)]
    )


class RecoveryFlow:
    """Finds accounts from identity details (steps and reasons in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        tickets: RecoveryTickets,
        notices: Notices,
        audit: AuditSink,
        clock: Clock,
        caller_limits: CallerLimits,
        phone_limiter: RateLimiter,
        pseudonym_key: bytes,
        per_phone_day: int = 5,
        per_ip_hour: int = 20,
        per_client_minute: int = DEFAULT_PER_CLIENT_MINUTE,
        cooling_off_seconds: float = DAY,
        grant_ttl_seconds: int = 600,
        allowed_country_codes: Collection[str] = ("86",),
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        review_queue: ReviewQueue | None = None,
        documents: ReviewDocuments | None = None,
        sessions: SessionRevoker | None = None,
    ) -> None:
        """Wire the flow; `pseudonym_key` is the code HMAC key (phone tags, the decoy)."""
        if per_phone_day < 1 or per_ip_hour < 1 or per_client_minute < 1:
            raise ValueError("recovery limits must be at least 1")
        if grant_ttl_seconds < 1 or cooling_off_seconds < 0:
            raise ValueError("the grant lifetime must be positive, the cooling-off not negative")
        self._uow = uow
        self._accounts = accounts
        self._tickets = tickets
        self._notices = notices
        self._audit = audit
        self._clock = clock
        self._caller_limits = caller_limits
        self._phone_limiter = phone_limiter
        self._digests = CodeDigests(pseudonym_key)
        self._pseudonyms = Pseudonyms(pseudonym_key)
        self._per_phone_day = per_phone_day
        self._caller_budget = CallerBudget(
            per_ip_hour=per_ip_hour, per_client_minute=per_client_minute
        )
        self._cooling_off = cooling_off_seconds
        self._grant_ttl = grant_ttl_seconds
        self._allowed_country_codes = tuple(allowed_country_codes)
        self._token_bytes = token_bytes
        self._review_queue = review_queue
        self._documents = documents
        self._sessions = sessions

    def __repr__(self) -> str:
        return "RecoveryFlow()"

    async def recover(self, cmd: RecoverCommand) -> Recovered:
        """Recover; the answer looks the same whether or not anything matched.

        Raises InvalidArgument (all field
        violations at once), TicketInvalid (`phone_ticket`), RateLimited
        (`account.recover.ip`, `.client`, `.phone`), FailedPrecondition (an
        account too bare to match: manual review), or Unavailable.
        """
        if cmd.manual_review:
            return await self._open_review(cmd)
        claim = self._validate(cmd)
        phone_ticket = PresentedTicket(
            cmd.phone_ticket, "phone_ticket", Purpose.RECOVER_ACCOUNT, Channel.SMS, claim.phone
        )
        await phone_ticket.consume(self._tickets)  # step 3
        phone_tag = self._digests.destination_tag(Channel.SMS, claim.phone)
        await self._charge(phone_tag, client_id=cmd.client_id, end_user_ip=cmd.ip)

        account = await self._account_for(claim)
        if account is None:
            return await self._no_match(claim.phone, phone_tag)
        credentials, data = account
        if not _matchable(claim.subject_type, data):
            await record_quietly(
                self._audit, RECOVER_ACTION, credentials.account_id, "manual_review", logger
            )
            raise FailedPrecondition(MANUAL_REVIEW_MESSAGE)
        if not _matches(claim, data):
            return await self._no_match(claim.phone, phone_tag)

        async with self._uow.begin():
            await self._notices.send(
                "login_name_reminder", phone=data.phone, login_name=credentials.login_name
            )
            await self._audit.record(RECOVER_ACTION, credentials.account_id, "matched")
        # Redis is not part of the transaction: the grant exists only once the above committed.
        grant = await self._tickets.grant(
            credentials.account_id, Purpose.RESET_PASSWORD, ttl=self._grant_ttl
        )
        return Recovered(
            login_name_masked=mask_login_name(credentials.login_name),
            reset_grant=grant,
            expires_in=self._grant_ttl,
        )

    async def _open_review(self, cmd: RecoverCommand) -> Recovered:
        """Manual review: check, spend the ticket and limits, open a case (module docstring)."""
        if self._review_queue is None or self._documents is None:
            raise Unimplemented(MANUAL_REVIEW_UNAVAILABLE)
        claim = self._validate_review(cmd)
        owner = self._documents.phone_owner(claim.phone)
        await check_documents(self._documents, cmd.document_ids, {owner}, _DOCUMENTS)
        await self._consume_new_phone_ticket(cmd.new_phone_ticket, claim.phone)
        phone_tag = self._digests.destination_tag(Channel.SMS, claim.phone)
        await self._charge(phone_tag, client_id=cmd.client_id, end_user_ip=cmd.ip)
        account_id = await self._account_by_identity(claim)
        async with self._uow.begin():
            case_id = await self._review_queue.open_case(
                kind="recovery",
                account_id=account_id,
                subject_type=claim.subject_type.value.lower(),
                fields=_claim_fields(claim),
                document_ids=cmd.document_ids,
                reference="",
            )
            await self._audit.record(RECOVER_ACTION, case_id, "review_opened")
        return Recovered(login_name_masked="", reset_grant="", expires_in=0, review_case_id=case_id)

    async def _consume_new_phone_ticket(self, ticket: str, new_phone: str) -> None:
        """Use up the new phone's ticket: RECOVER_ACCOUNT as the API names it, or BIND_PHONE.

        RECOVER_ACCOUNT codes go only to phones an account holds (B4,
        `flows/code_recipients.py`), and the phone of someone who lost theirs
        is usually new to the platform: its holder proves it with the purpose
        for binding a phone, which is what the approval will do. A ticket of
        neither purpose costs two of its three mismatches.
        """
        try:
            await PresentedTicket(
                ticket, _NEW_PHONE_TICKET, Purpose.RECOVER_ACCOUNT, Channel.SMS, new_phone
            ).consume(self._tickets)
        except TicketInvalid:
            await PresentedTicket(
                ticket, _NEW_PHONE_TICKET, Purpose.BIND_PHONE, Channel.SMS, new_phone
            ).consume(self._tickets)

    async def _account_by_identity(self, claim: _Claim) -> str | None:
        """The active account holding this identity (looked up by ID number or USCC), or None."""
        if claim.subject_type is SubjectType.NATURAL_PERSON:
            key = self._accounts.id_number_key(claim.id_type, claim.id_number)
            credentials = await self._accounts.find_by_key(key)
        elif len(claim.uscc) == len("91350100M000100Y43"):
            credentials = await self._accounts.find_credentials(IdentifierKind.USCC, claim.uscc)
        else:
            credentials = None  # an organisation code is not indexed: no match
        if credentials is None or credentials.status != AccountStatus.ACTIVE:
            return None
        if credentials.subject_type is not claim.subject_type:
            return None
        data = await self._accounts.get_personal_data(credentials.account_id)
        if not _matchable(claim.subject_type, data) or not _matches(claim, data):
            return None
        return credentials.account_id

    async def apply_case(
        self, case: ReviewCase, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> Applied:
        """A reviewer's final decision on a recovery case, inside its unit of work."""
        new_phone = case.fields.get("new_phone", "")
        if not approved:
            await self._notices.send(REVIEW_REJECTED_NOTICE, phone=new_phone)
            await self._audit.record(RECOVER_ACTION, case.case_id, "review_rejected")
            return Applied()
        if case.account_id is None:
            raise FailedPrecondition("the case matched no account: reject it")
        credentials = await self._accounts.get_credentials(case.account_id)
        data = await self._accounts.get_personal_data(case.account_id)
        refusal = await self._refusal_now(credentials, data.phone, new_phone)
        if refusal:
            await self._notices.send(REVIEW_REJECTED_NOTICE, phone=new_phone)
            await self._audit.record(RECOVER_ACTION, case.case_id, "review_rejected")
            return Applied(rejected_because=refusal)
        if new_phone != data.phone:
            try:
                await self._accounts.replace_contact(
                    credentials.account_id, "phone", expected=data.phone, new=new_phone
                )
            except AlreadyExists:
                raise Conflict(
                    "the new phone was bound to another account meanwhile: decide the case again"
                ) from None
            await self._notices.send(
                "phone_changed", phone=data.phone, email=data.email, new_phone=mask_phone(new_phone)
            )
        if self._sessions is not None:
            await self._sessions.revoke_all(credentials.account_id, RevokeReason.PHONE_CHANGE)
        await self._notices.send(
            "login_name_reminder", phone=new_phone, login_name=credentials.login_name
        )
        await self._audit.record(RECOVER_ACTION, credentials.account_id, "review_approved")
        return Applied()

    async def _refusal_now(
        self, credentials: AccountCredentials, old_phone: str, new_phone: str
    ) -> str:
        """Why the approved recovery cannot bind the new phone now ("" if it can)."""
        if credentials.status != AccountStatus.ACTIVE:
            return "the account is no longer active"
        changed_at = credentials.phone_changed_at
        if changed_at is not None and self._clock.now() - changed_at < self._cooling_off:
            return "the account's phone was changed within the cooling-off window"
        if new_phone != old_phone and await self._accounts.holds(IdentifierKind.PHONE, new_phone):
            return "the new phone was bound to another account meanwhile"
        return ""

    async def _charge(self, phone_tag: str, *, client_id: str, end_user_ip: str) -> None:
        """Step 4: the caller's windows, then the phone's; a refusal refunds what was charged."""
        now = self._clock.now()
        charged: list[Reservation] = await self._caller_limits.charge(
            RECOVER_ACTION,
            self._caller_budget,
            client_id=client_id,
            end_user_ip=end_user_ip or None,
            now=now,
        )
        try:
            await self._phone_limiter.acquire(
                PHONE_POLICY, phone_key(phone_tag), self._per_phone_day, DAY, now
            )
        except Exception:
            await self._caller_limits.release(charged)
            raise

    async def _account_for(self, claim: _Claim) -> tuple[AccountCredentials, PersonalData] | None:
        """Step 5: the account the phone is bound to, if it may be recovered through it."""
        credentials = await self._accounts.find_by_phone(claim.phone)
        if credentials is None:
            return None
        changed_at = credentials.phone_changed_at
        if changed_at is not None and self._clock.now() - changed_at < self._cooling_off:
            return None
        if credentials.status != AccountStatus.ACTIVE:
            return None
        if credentials.subject_type is not claim.subject_type:
            return None
        data = await self._accounts.get_personal_data(credentials.account_id)
        if data.phone != claim.phone:  # changed between the two reads
            return None
        return credentials, data

    async def _no_match(self, phone: str, phone_tag: str) -> Recovered:
        """Step 8 without a match: audited under the phone's tag, answered with the decoy."""
        async with self._uow.begin():
            await self._audit.record(RECOVER_ACTION, phone_tag, "no_match")
        return self._decoy(phone)

    def _decoy(self, phone: str) -> Recovered:
        """The no-match answer: a stable masked name and grant tag per phone, a fresh secret.

        A real grant is `vt1.<tag of the account>.<32 random bytes>`; the decoy is
        `vt1.<tag of the phone under DECOY_LABEL>.<32 random bytes>`, never stored.
        """
        digest = bytes.fromhex(self._pseudonyms.tag(DECOY_LABEL, phone, size=32))
        masked = decoy_login_name(digest[16], digest[17])
        grant = ticket_from_secret(digest[:16].hex(), self._token_bytes(TICKET_SECRET_BYTES))
        return Recovered(login_name_masked=masked, reset_grant=grant, expires_in=self._grant_ttl)

    def _validate(self, cmd: RecoverCommand) -> _Claim:
        """Step 2: normalise and validate every field; InvalidArgument lists all violations."""
        v = Violations()
        phone = phone_field(v, "phone", cmd.phone, self._allowed_country_codes)
        if not cmd.phone_ticket.strip():
            v.add("phone_ticket", "must not be empty")
        return self._claim(v, cmd, phone)

    def _validate_review(self, cmd: RecoverCommand) -> _Claim:
        """Manual review's shapes: the identity, the new phone, its ticket, the documents;
        the claim's phone is the new phone."""
        v = Violations()
        phone = phone_field(v, _NEW_PHONE, cmd.new_phone, self._allowed_country_codes)
        check_ticket_shape(v, _NEW_PHONE_TICKET, cmd.new_phone_ticket, required=True)
        check_document_ids(v, _DOCUMENTS, cmd.document_ids)
        return self._claim(v, cmd, phone)

    def _claim(self, v: Violations, cmd: RecoverCommand, phone: str) -> _Claim:
        """The identity fields, normalised; raises InvalidArgument with everything in `v`."""
        today = today_in_china(self._clock)
        if cmd.subject_type is SubjectType.NATURAL_PERSON:
            name = _required_text(v, _NATURAL + "name", cmd.name, MAX_NAME_CHARS)
            id_number = id_number_field(
                v,
                _NATURAL + "id_number",
                cmd.id_number,
                cmd.id_type,
                type_field=_NATURAL + "id_type",
                today=today,
            )
            v.raise_if_any()
            return _Claim(
                subject_type=SubjectType.NATURAL_PERSON,
                phone=phone,
                name=name,
                id_type=IdType(cmd.id_type),
                id_number=id_number,
            )
        if cmd.subject_type is SubjectType.LEGAL_PERSON:
            organization_name = _required_text(
                v, _LEGAL + "organization_name", cmd.organization_name, MAX_ORGANIZATION_NAME_CHARS
            )
            uscc = v.run(
                _LEGAL + "uscc",
                cmd.uscc,
                lambda raw: normalize_uscc_or_org_code(raw, _LEGAL + "uscc"),
            )
            for path, value in (
                ("organization_type", cmd.organization_type),
                ("representative_type", cmd.representative_type),
            ):
                if not value:
                    v.add(_LEGAL + path, "must be specified")
            representative_name = _required_text(
                v, _LEGAL + "representative_name", cmd.representative_name, MAX_NAME_CHARS
            )
            representative_id_number = id_number_field(
                v,
                _LEGAL + "representative_id_number",
                cmd.representative_id_number,
                cmd.representative_id_type,
                type_field=_LEGAL + "representative_id_type",
                today=today,
            )
            v.raise_if_any()
            return _Claim(
                subject_type=SubjectType.LEGAL_PERSON,
                phone=phone,
                organization_name=organization_name,
                organization_type=cmd.organization_type,
                uscc=uscc,
                representative_type=cmd.representative_type,
                representative_name=representative_name,
                representative_id_type=IdType(cmd.representative_id_type),
                representative_id_number=representative_id_number,
            )
        v.add("subject", "give natural_person or legal_person")
        v.raise_if_any()
        raise AssertionError("unreachable: a missing subject is a violation")


def _claim_fields(claim: _Claim) -> dict[str, str]:
    """What the person gave, as review fields (the reviewer compares it with the documents)."""
    if claim.subject_type is SubjectType.NATURAL_PERSON:
        given = {"name": claim.name, "id_type": claim.id_type.name, "id_number": claim.id_number}
    else:
        given = {
            "organization_name": claim.organization_name,
            "organization_type": claim.organization_type,
            "uscc": claim.uscc,
            "representative_type": claim.representative_type,
            "representative_name": claim.representative_name,
            "representative_id_type": claim.representative_id_type.name,
            "representative_id_number": claim.representative_id_number,
        }
    return {"new_phone": claim.phone, **given}


def phone_key(phone_tag: str) -> str:
    """Rate-limit key of recoveries through one phone (its destination tag, never the number)."""
    return f"xh:rl:{{d:{phone_tag}}}:{RECOVER_ACTION}"


def _required_text(v: Violations, field_name: str, raw: str, max_chars: int) -> str:
    """A normalised free-text field that must not be empty (violations into v)."""
    before = len(v.items)
    value = free_text(v, field_name, raw, max_chars)
    if not value and len(v.items) == before:
        v.add(field_name, "must not be empty")
    return value


def _fold(value: str) -> str:
    """A name or text as compared: NFKC, without whitespace, case folded, and the middle
    dots of transliterated names (`·`, `・`, `.`, ...) as one."""
    text = "".join(normalize(value).split()).casefold()
    return _NAME_DOTS.sub("\u00b7", text)


def _same(given: str, held: str) -> bool:
    """Whether two compared values are equal, in time independent of where they differ."""
    return hmac.compare_digest(given.encode("utf-8"), held.encode("utf-8"))


def _matchable(subject_type: SubjectType, data: PersonalData) -> bool:
    """Whether the account holds the minimum a recovery must match (step 6)."""
    if subject_type is SubjectType.NATURAL_PERSON:
        return bool(data.id_number)
    return bool(data.uscc and data.representative_name and data.representative_id_number)


def _matches(claim: _Claim, data: PersonalData) -> bool:
    """Step 7: every field the account holds equals the one given (all compared, always)."""
    checks: list[bool] = []

    def held(given: str, stored: str, fold: bool = False) -> None:
        if stored:
            checks.append(_same(_fold(given), _fold(stored)) if fold else _same(given, stored))

    if claim.subject_type is SubjectType.NATURAL_PERSON:
        held(claim.name, data.name, fold=True)
        held(claim.id_type.name, data.id_type.name if data.id_number else "")
        held(claim.id_number, data.id_number)
    else:
        # A 9-character organisation code is the one inside the held USCC.
        is_org_code = len(claim.uscc) != len(data.uscc)
        held(claim.uscc, org_code_of_uscc(data.uscc) if is_org_code else data.uscc)
        held(claim.organization_name, data.organization_name, fold=True)
        held(claim.organization_type, data.organization_type)
        held(claim.representative_type, data.representative_type)
        held(claim.representative_name, data.representative_name, fold=True)
        held(
            claim.representative_id_type.name,
            data.representative_id_type.name if data.representative_id_number else "",
        )
        held(claim.representative_id_number, data.representative_id_number)
    return bool(checks) and all(checks)


__all__ = [
    "DEFAULT_PER_CLIENT_MINUTE",
    "MANUAL_REVIEW_MESSAGE",
    "MANUAL_REVIEW_UNAVAILABLE",
    "PHONE_POLICY",
    "RECOVER_ACTION",
    "RecoverCommand",
    "Recovered",
    "RecoveryFlow",
    "RecoveryTickets",
    "decoy_login_name",
    "phone_key",
]
