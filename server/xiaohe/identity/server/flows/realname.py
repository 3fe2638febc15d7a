"""Real-name verification (实名认证) and the identity documents it rests on (D1, I1, I2).

Uploading a document (`start_upload`, then `finish_upload`):

1. Before the first byte: the header's kind, name and declared size are
   checked; the owner is the signed-in account, or with a phone ticket
   (SMS, BIND_PHONE or RECOVER_ACCOUNT; checked, not consumed) the holder of
   that phone, `phone:<blind index>`. The separate consent to processing
   identity documents (PIPL Art. 29) must be on record for the owner, or be
   given in this header; otherwise FAILED_PRECONDITION `CONSENT_REQUIRED`.
2. The transport reads the bytes up to the permit's limit.
3. The bytes are sniffed, parsed and stripped of metadata (realname/sniffing.py).
4. One unit of work: the consent record (when given now), the encrypted
   document (file and row) and its audit record, or none of them.

Submitting an identity (`submit_natural`, `submit_legal`):

1. The request's shape (InvalidArgument, field by field; identifiers get
   their check digits checked here, as at registration).
2. The account: its subject type must match; an account already verified, or
   with a submission in review, cannot submit again (FAILED_PRECONDITION).
3. The documents: each the caller's own and of the right kind.
4. The verdict, before anything is written (the verifier may call out over
   the network, which a unit of work must not wait for): a claim another
   account holds already is rejected without naming it; then the rules
   (age, validity dates; realname/claims.py), then the configured verifier.
   A rule-level match goes to review instead when `real_name_review` is on.
5. One unit of work: the submission (details encrypted), the verified claim
   (unique across accounts: the loser of a race is rejected), the account's
   real-name level, a review case when one is needed, and the audit record.

A reviewer's decision arrives through `apply_review` (called by the review
flow inside its own unit of work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketClaims
from xiaohe.identity.server.errors import (
    ConsentRequired,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TicketInvalid,
)
from xiaohe.identity.server.flows.registration import PolicyVersions
from xiaohe.identity.server.privacy.consents import IDENTITY_DOCUMENTS_PURPOSE, ConsentLedger
from xiaohe.identity.server.realname.claims import (
    DEFAULT_MIN_AGE,
    LegalPersonClaim,
    NaturalPersonClaim,
    RuleProblem,
    legal_problems,
    mask_organization_name,
    mask_person_name,
    natural_problems,
)
from xiaohe.identity.server.realname.documents import (
    DOCUMENT_KINDS,
    PHONE_OWNER_PREFIX,
    DocumentInfo,
    DocumentService,
)
from xiaohe.identity.server.realname.sniffing import sniff_and_strip
from xiaohe.identity.server.realname.submissions import State, Submission, SubmissionStore
from xiaohe.identity.server.realname.verifiers import Outcome, Verdict, Verifier
from xiaohe.identity.server.shared.identifiers import (
    CHINA_TIMEZONE,
    IdType,
    normalize,
    normalize_uscc_or_org_code,
    today_in_china,
)
from xiaohe.identity.server.shared.network import mask_ip
from xiaohe.identity.server.shared.validation import (
    MAX_NAME_CHARS,
    MAX_ORGANIZATION_NAME_CHARS,
    MAX_TICKET_CHARS,
    Violations,
    free_text,
    id_number_field,
)
from xiaohe.identity.server.storage.database import UnitOfWork

UPLOAD_CHANNEL: Final = "document_upload"
"""The consent ledger's channel of a consent given with an upload."""
SUBMIT_ACTION: Final = "realname.submit"
REVIEW_ACTION: Final = "realname.review"
CONFLICT_REASON: Final = "this identity is already verified for another account"
MAX_FILE_NAME_CHARS: Final = 255
MAX_ADDRESS_CHARS: Final = 300
MAX_DOCUMENTS_PER_FIELD: Final = 6
ORGANIZATION_TYPES: Final = (
    "ENTERPRISE",
    "INDIVIDUAL_BUSINESS",
    "PUBLIC_INSTITUTION",
    "SOCIAL_ORGANIZATION",
    "GOVERNMENT_AGENCY",
    "OTHER",
)
REPRESENTATIVE_TYPES: Final = ("LEGAL_REPRESENTATIVE", "PERSON_IN_CHARGE")
_TICKET_PURPOSES: Final = (Purpose.BIND_PHONE, Purpose.RECOVER_ACCOUNT)


class ReviewQueue(Protocol):
    """Manual review cases (implemented by the review flow)."""

    async def open_case(
        self,
        *,
        kind: str,
        account_id: str | None,
        subject_type: str,
        fields: Mapping[str, str],
        document_ids: Sequence[str],
        reference: str,
    ) -> str:
        """Open a case inside the caller's unit of work; returns the case id.

        kind: `real_name` | `phone_change` | `recovery`; subject_type:
        `natural_person` | `legal_person`; fields: the plaintext values the
        reviewer compares (stored encrypted, masked unless revealed);
        reference: for `real_name` the submission id.
        """
        ...


class TicketChecker(Protocol):
    """Checks a ticket without using it up (codes.tickets.TicketService)."""

    async def check_any(
        self, ticket: str, *, purposes: Collection[Purpose], channel: Channel | None = None
    ) -> TicketClaims:
        """The ticket's claims if it has one of `purposes`; TicketInvalid otherwise."""
        ...


# -- commands and results ---------------------------------------------------------------


@dataclass(frozen=True)
class UploadHeader:
    """The first message of an upload; `kind` is a DOCUMENT_KINDS value or ""."""

    kind: str
    file_name: str
    declared_size: int
    separate_consent: bool
    phone_ticket: str


@dataclass(frozen=True)
class UploadPermit:
    """What `start_upload` allows: who owns the bytes and how many may come."""

    owner: str
    kind: str
    file_name: str
    limit: int
    """The most bytes the stream may carry (the declared size if given, else the cap)."""
    exact: bool
    """True when the header declared the size: fewer bytes is a truncated stream."""
    record_consent: bool
    client_id: str
    ip_masked: str
    policy_version: int


@dataclass(frozen=True)
class NaturalPersonCommand:
    """SubmitNaturalPerson; times in epoch seconds (None: not given / long-term)."""

    account_id: str
    name: str
    id_type: int
    id_number: str
    valid_from: float | None
    valid_until: float | None
    address: str
    document_ids: tuple[str, ...]


@dataclass(frozen=True)
class LegalPersonCommand:
    """SubmitLegalPerson; types are enum names without their prefix ("" unspecified)."""

    account_id: str
    organization_name: str
    organization_type: str
    uscc: str
    representative_type: str
    representative_name: str
    representative_id_type: int
    representative_id_number: str
    address: str
    licence_document_ids: tuple[str, ...]
    publicity_screenshot_document_ids: tuple[str, ...]
    representative_id_document_ids: tuple[str, ...]


@dataclass(frozen=True)
class Submitted:
    """The answer to a submission."""

    submission_id: str
    state: State
    reason: str


@dataclass(frozen=True)
class RealNameStatus:
    """GetRealNameStatus: the latest submission (None: nothing submitted) and the level."""

    state: State | None
    level: int
    reason: str = ""
    submission_id: str = ""
    submitted_at: float | None = None
    decided_at: float | None = None
    name_masked: str = ""


@dataclass(frozen=True)
class _Decision:
    state: State
    level: int
    reason: str


class RealNameFlow:
    """Uploads identity documents and verifies real names (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        documents: DocumentService,
        submissions: SubmissionStore,
        consents: ConsentLedger,
        policies: PolicyVersions,
        tickets: TicketChecker,
        verifier: Verifier,
        clock: Clock,
        audit: AuditSink,
        review_queue: ReviewQueue | None = None,
        review_rule_passed: bool = False,
        min_age: int = DEFAULT_MIN_AGE,
        max_document_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._documents = documents
        self._submissions = submissions
        self._consents = consents
        self._policies = policies
        self._tickets = tickets
        self._verifier = verifier
        self._clock = clock
        self._audit = audit
        self.review_queue = review_queue
        """The review flow's queue; None until one is wired (then IN_REVIEW is refused)."""
        self._review_rule_passed = review_rule_passed
        self._min_age = min_age
        self.max_document_bytes = max_document_bytes

    def __repr__(self) -> str:
        return f"RealNameFlow(verifier={self._verifier.name!r})"

    # -- documents ----------------------------------------------------------------------

    async def start_upload(
        self, header: UploadHeader, *, account_id: str | None, client_id: str, ip: str
    ) -> UploadPermit:
        """Step 1 of an upload: check the header, find the owner, check the separate consent.

        `account_id` is the signed-in user (None when the header carries a phone ticket).
        """
        v = Violations()
        if header.kind not in DOCUMENT_KINDS:
            v.add("header.kind", "must be a document kind")
        file_name = free_text(v, "header.file_name", header.file_name, MAX_FILE_NAME_CHARS)
        if header.declared_size < 0:
            v.add("header.declared_size", "must not be negative")
        elif header.declared_size > self.max_document_bytes:
            v.add("header.declared_size", f"must be at most {self.max_document_bytes} bytes")
        if len(header.phone_ticket) > MAX_TICKET_CHARS:
            v.add("header.phone_ticket", f"must be at most {MAX_TICKET_CHARS} characters")
        v.raise_if_any()
        if header.phone_ticket:
            try:
                claims = await self._tickets.check_any(
                    header.phone_ticket, purposes=_TICKET_PURPOSES, channel=Channel.SMS
                )
            except TicketInvalid:
                raise TicketInvalid(field="header.phone_ticket") from None
            owner = self._documents.phone_owner(claims.destination)
            has = await self._consents.holder_has_consent(owner, IDENTITY_DOCUMENTS_PURPOSE)
        elif account_id:
            owner = account_id
            has = await self._consents.has_consent(owner, IDENTITY_DOCUMENTS_PURPOSE)
        else:
            raise InvalidArgument(
                FieldViolation("header.phone_ticket", "needed when no access token is sent")
            )
        if not has and not header.separate_consent:
            raise ConsentRequired(
                "the separate consent to processing identity documents is required: show the "
                "consent text of the current privacy policy, then set header.separate_consent"
            )
        version = (await self._policies.current()).version
        exact = header.declared_size > 0
        return UploadPermit(
            owner=owner,
            kind=header.kind,
            file_name=file_name,
            limit=header.declared_size if exact else self.max_document_bytes,
            exact=exact,
            record_consent=not has,
            client_id=client_id,
            ip_masked=mask_ip(ip),
            policy_version=version,
        )

    async def finish_upload(self, permit: UploadPermit, content: bytes) -> DocumentInfo:
        """Steps 3-4: sniff, strip, then consent + document + audit in one unit of work."""
        if len(content) > permit.limit:
            raise InvalidArgument(FieldViolation("chunk", "more bytes than allowed"))
        if permit.exact and len(content) != permit.limit:
            raise InvalidArgument(
                FieldViolation("chunk", "the stream ended before header.declared_size bytes")
            )
        sniffed = await asyncio.to_thread(sniff_and_strip, content, permit.file_name)
        async with self._uow.begin():
            if permit.record_consent:
                if permit.owner.startswith(PHONE_OWNER_PREFIX):
                    await self._consents.record_for_holder(
                        permit.owner,
                        permit.policy_version,
                        client_id=permit.client_id,
                        channel=UPLOAD_CHANNEL,
                        purpose=IDENTITY_DOCUMENTS_PURPOSE,
                        ip_masked=permit.ip_masked,
                    )
                else:
                    await self._consents.record(
                        permit.owner,
                        permit.policy_version,
                        client_id=permit.client_id,
                        channel=UPLOAD_CHANNEL,
                        purpose=IDENTITY_DOCUMENTS_PURPOSE,
                        ip_masked=permit.ip_masked,
                    )
            return await self._documents.store(
                owner=permit.owner,
                kind=permit.kind,
                file_name=permit.file_name,
                content_type=sniffed.content_type,
                content=sniffed.content,
            )

    # -- submissions --------------------------------------------------------------------

    async def submit_natural(self, cmd: NaturalPersonCommand) -> Submitted:
        """SubmitNaturalPerson (steps in the module docstring)."""
        today = today_in_china(self._clock)
        v = Violations()
        name = _required_text(v, "name", cmd.name, MAX_NAME_CHARS)
        id_type = _id_type(v, "id_type", cmd.id_type)
        id_number = (
            id_number_field(
                v, "id_number", cmd.id_number, id_type, type_field="id_type", today=today
            )
            if id_type is not None
            else ""
        )
        address = _required_text(v, "address", cmd.address, MAX_ADDRESS_CHARS)
        valid_from, valid_until = _validity(v, cmd.valid_from, cmd.valid_until)
        _check_ids(v, "document_ids", cmd.document_ids)
        v.raise_if_any()
        assert id_type is not None
        await self._check_account(cmd.account_id, SubjectType.NATURAL_PERSON)
        await self._check_documents(cmd.account_id, {"document_ids": ("id_scan", cmd.document_ids)})
        phone = (await self._accounts.get_personal_data(cmd.account_id)).phone
        claim = NaturalPersonClaim(
            name=name,
            id_type=id_type,
            id_number=id_number,
            valid_from=valid_from,
            valid_until=valid_until,
            address=address,
            phone=phone,
        )
        claim_key = self._submissions.natural_claim(id_type, id_number)
        decision = await self._decide(
            claim_key,
            cmd.account_id,
            natural_problems(claim, today, self._min_age),
            lambda: self._verifier.check_natural(claim),
        )
        fields = {
            "name": name,
            "id_type": id_type.name,
            "id_number": id_number,
            "valid_from": valid_from.isoformat() if valid_from else "",
            "valid_until": valid_until.isoformat() if valid_until else "long_term",
            "address": address,
        }
        return await self._record(
            cmd.account_id, "natural_person", fields, cmd.document_ids, claim_key, decision
        )

    async def submit_legal(self, cmd: LegalPersonCommand) -> Submitted:
        """SubmitLegalPerson (steps in the module docstring)."""
        today = today_in_china(self._clock)
        v = Violations()
        organization = _required_text(
            v, "organization_name", cmd.organization_name, MAX_ORGANIZATION_NAME_CHARS
        )
        if cmd.organization_type not in ORGANIZATION_TYPES:
            v.add("organization_type", "must be specified")
        uscc = v.run("uscc", cmd.uscc, lambda raw: normalize_uscc_or_org_code(raw, "uscc"))
        if cmd.representative_type not in REPRESENTATIVE_TYPES:
            v.add("representative_type", "must be specified")
        rep_name = _required_text(v, "representative_name", cmd.representative_name, MAX_NAME_CHARS)
        rep_type = _id_type(v, "representative_id_type", cmd.representative_id_type)
        rep_number = (
            id_number_field(
                v,
                "representative_id_number",
                cmd.representative_id_number,
                rep_type,
                type_field="representative_id_type",
                today=today,
            )
            if rep_type is not None
            else ""
        )
        address = _required_text(v, "address", cmd.address, MAX_ADDRESS_CHARS)
        groups = {
            "licence_document_ids": ("business_licence", cmd.licence_document_ids),
            "publicity_screenshot_document_ids": (
                "publicity_screenshot",
                cmd.publicity_screenshot_document_ids,
            ),
            "representative_id_document_ids": (
                "representative_id_scan",
                cmd.representative_id_document_ids,
            ),
        }
        for field_name, (_, ids) in groups.items():
            _check_ids(v, field_name, ids)
        v.raise_if_any()
        assert rep_type is not None
        await self._check_account(cmd.account_id, SubjectType.LEGAL_PERSON)
        await self._check_documents(cmd.account_id, groups)
        claim = LegalPersonClaim(
            organization_name=organization,
            organization_type=cmd.organization_type,
            uscc=uscc,
            representative_type=cmd.representative_type,
            representative_name=rep_name,
            representative_id_type=rep_type,
            representative_id_number=rep_number,
            address=address,
        )
        claim_key = self._submissions.legal_claim(uscc)
        decision = await self._decide(
            claim_key,
            cmd.account_id,
            legal_problems(claim, today, self._min_age),
            lambda: self._verifier.check_legal(claim),
        )
        fields = {
            "organization_name": organization,
            "organization_type": cmd.organization_type,
            "uscc": uscc,
            "representative_type": cmd.representative_type,
            "representative_name": rep_name,
            "representative_id_type": rep_type.name,
            "representative_id_number": rep_number,
            "address": address,
        }
        document_ids = (
            *cmd.licence_document_ids,
            *cmd.publicity_screenshot_document_ids,
            *cmd.representative_id_document_ids,
        )
        return await self._record(
            cmd.account_id, "legal_person", fields, document_ids, claim_key, decision
        )

    async def status(self, account_id: str) -> RealNameStatus:
        """GetRealNameStatus: the latest submission and the account's level."""
        level = (await self._accounts.get_view(account_id)).real_name_level
        latest = await self._submissions.latest(account_id)
        if latest is None:
            return RealNameStatus(state=None, level=level)
        name_masked = ""
        if latest.state is State.VERIFIED:
            details = await self._submissions.details(latest)
            name_masked = (
                mask_person_name(details.get("name", ""))
                if latest.subject_type == "natural_person"
                else mask_organization_name(details.get("organization_name", ""))
            )
        return RealNameStatus(
            state=latest.state,
            level=level,
            reason=latest.reason,
            submission_id=latest.submission_id,
            submitted_at=latest.submitted_at,
            decided_at=latest.decided_at,
            name_masked=name_masked,
        )

    async def apply_review(
        self, submission_id: str, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> None:
        """A reviewer's decision on a submission IN_REVIEW (joins the caller's unit of work).

        Approved: VERIFIED and level 2, unless another account holds the claim by
        now (then REJECTED with a reason that does not name it). Rejected:
        REJECTED with `reason`. NotFound for an unknown submission,
        FailedPrecondition when it is not in review (decided already),
        PermissionDenied for a reviewer deciding about their own account.
        """
        if not reason.strip():
            raise InvalidArgument(FieldViolation("reason", "every decision carries a reason"))
        submission = await self._submissions.get(submission_id)
        if submission is None:
            raise NotFound("no such real-name submission")
        if submission.account_id == reviewer_account_id:
            raise PermissionDenied("a reviewer cannot decide about their own account")
        if submission.state is not State.IN_REVIEW:
            raise FailedPrecondition("the submission is not in review")
        async with self._uow.begin():
            state, level, why = State.REJECTED, 0, reason
            if approved:
                if await self._submissions.claim(
                    submission.claim, submission.account_id, submission_id
                ):
                    state, level = State.VERIFIED, 2
                else:
                    why = CONFLICT_REASON
            decided = await self._submissions.decide(
                submission, state=state, reason=why, level=level, decided_by=reviewer_account_id
            )
            if not decided:
                raise FailedPrecondition("the submission is not in review")
            if level:
                await self._accounts.set_real_name_level(submission.account_id, level)
            await self._audit.record(REVIEW_ACTION, submission_id, state.value)

    # -- helpers --------------------------------------------------------------------------

    async def _check_account(self, account_id: str, subject_type: SubjectType) -> None:
        """Step 2: the subject type matches; nothing verified or in review already."""
        account = await self._accounts.get_credentials(account_id)
        if account.subject_type is not subject_type:
            raise FailedPrecondition(
                f"this account is not a {subject_type.value.lower().replace('_', ' ')}"
            )
        await self._check_nothing_open(account_id)

    async def _check_nothing_open(self, account_id: str) -> None:
        """Neither verified already nor waiting for a decision."""
        latest = await self._submissions.latest(account_id)
        if latest is not None and latest.state is State.VERIFIED:
            raise FailedPrecondition("the account's real name is verified already")
        if latest is not None and latest.state in (State.IN_REVIEW, State.PENDING):
            raise FailedPrecondition("a submission of this account is waiting for a decision")

    async def _check_documents(
        self, account_id: str, groups: Mapping[str, tuple[str, Sequence[str]]]
    ) -> None:
        """Step 3: every document exists, is the account's own and of the field's kind."""
        v = Violations()
        for field_name, (kind, ids) in groups.items():
            for i, document_id in enumerate(ids):
                info = await self._documents.info(document_id)
                if info is None or info.owner != account_id:
                    v.add(f"{field_name}[{i}]", "is not a document this account uploaded")
                elif info.kind != kind:
                    v.add(f"{field_name}[{i}]", f"must be a document of kind {kind}")
        v.raise_if_any()

    async def _decide(
        self,
        claim_key: str,
        account_id: str,
        problems: list[RuleProblem],
        verify: _VerifyCall,
    ) -> _Decision:
        """Step 4: conflict, then rules, then the verifier (no unit of work is open)."""
        if await self._submissions.claimed_by_other(claim_key, account_id):
            return _Decision(State.REJECTED, 0, CONFLICT_REASON)
        if problems:
            first = problems[0]
            return _Decision(State.REJECTED, 0, f"{first.field}: {first.reason}")
        verdict: Verdict = await verify()
        if verdict.outcome is Outcome.MISMATCH:
            return _Decision(State.REJECTED, 0, verdict.reason)
        if verdict.outcome is Outcome.REVIEW:
            return _Decision(State.IN_REVIEW, 0, verdict.reason)
        if verdict.level < 2 and self._review_rule_passed:
            return _Decision(State.IN_REVIEW, 0, "a reviewer checks submissions on this service")
        return _Decision(State.VERIFIED, verdict.level, "")

    async def _record(
        self,
        account_id: str,
        subject_type: str,
        fields: Mapping[str, str],
        document_ids: Sequence[str],
        claim_key: str,
        decision: _Decision,
    ) -> Submitted:
        """Step 5: submission, claim, level, review case and audit in one unit of work."""
        if decision.state is State.IN_REVIEW and self.review_queue is None:
            raise FailedPrecondition(
                "this submission needs a manual review, which this server does not offer yet"
            )
        submission_id = self._submissions.new_id()
        state, level, reason = decision.state, decision.level, decision.reason
        async with self._uow.begin():
            # Checked again under the account's lock: of two submissions at once (a slow
            # verifier in between), the second finds the first and is refused.
            await self._accounts.lock_credentials(account_id)
            await self._check_nothing_open(account_id)
            if state is State.VERIFIED and not await self._submissions.claim(
                claim_key, account_id, submission_id
            ):
                state, level, reason = State.REJECTED, 0, CONFLICT_REASON
            submission: Submission = await self._submissions.create(
                submission_id=submission_id,
                account_id=account_id,
                subject_type=subject_type,
                details=fields,
                document_ids=document_ids,
                claim=claim_key,
                verifier=self._verifier.name,
                state=state,
                reason=reason,
                level=level,
            )
            if state is State.VERIFIED:
                await self._accounts.set_real_name_level(account_id, level)
            if state is State.IN_REVIEW:
                assert self.review_queue is not None
                await self.review_queue.open_case(
                    kind="real_name",
                    account_id=account_id,
                    subject_type=subject_type,
                    fields=fields,
                    document_ids=document_ids,
                    reference=submission_id,
                )
            await self._audit.record(SUBMIT_ACTION, submission_id, state.value)
        return Submitted(submission.submission_id, submission.state, submission.reason)


class _VerifyCall(Protocol):
    async def __call__(self) -> Verdict: ...


# -- request shape ----------------------------------------------------------------------


def _required_text(v: Violations, field_name: str, raw: str, max_chars: int) -> str:
    value = free_text(v, field_name, raw, max_chars).strip()
    if not value and not any(item.field == field_name for item in v.items):
        v.add(field_name, "must not be empty")
    return value


def _id_type(v: Violations, field_name: str, value: int) -> IdType | None:
    try:
        kind = IdType(value)
    except ValueError:
        kind = IdType.UNSPECIFIED
    if kind is IdType.UNSPECIFIED:
        v.add(field_name, "must be an identity document type")
        return None
    return kind


def _check_ids(v: Violations, field_name: str, ids: Sequence[str]) -> None:
    if not ids:
        v.add(field_name, "must name at least one uploaded document")
    elif len(ids) > MAX_DOCUMENTS_PER_FIELD:
        v.add(field_name, f"must name at most {MAX_DOCUMENTS_PER_FIELD} documents")
    elif len(set(ids)) != len(ids):
        v.add(field_name, "must not name a document twice")
    for i, document_id in enumerate(ids):
        if not document_id or len(document_id) > 40 or normalize(document_id) != document_id:
            v.add(f"{field_name}[{i}]", "must be a document id from UploadDocument")


def _validity(
    v: Violations, valid_from: float | None, valid_until: float | None
) -> tuple[date | None, date | None]:
    """The validity period as dates in China; `valid_from` is required."""
    if valid_from is None:
        v.add("valid_from", "must be the first day the document is valid")
        return None, None
    start = datetime.fromtimestamp(valid_from, tz=CHINA_TIMEZONE).date()
    end = (
        None
        if valid_until is None
        else datetime.fromtimestamp(valid_until, tz=CHINA_TIMEZONE).date()
    )
    if end is not None and end < start:
        v.add("valid_until", "must not be before valid_from")
    return start, end


__all__ = [
    "CONFLICT_REASON",
    "REVIEW_ACTION",
    "SUBMIT_ACTION",
    "LegalPersonCommand",
    "NaturalPersonCommand",
    "RealNameFlow",
    "RealNameStatus",
    "ReviewQueue",
    "Submitted",
    "UploadHeader",
    "UploadPermit",
]
