"""Review cases as the rest of the server sees them: frozen dataclasses, no SQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class CaseKind(StrEnum):
    """What a case decides."""

    REAL_NAME = "real_name"
    PHONE_CHANGE = "phone_change"
    RECOVERY = "recovery"


class CaseState(StrEnum):
    """Where a case stands; APPROVED and REJECTED are final."""

    OPEN = "OPEN"
    AWAITING_SECOND_APPROVAL = "AWAITING_SECOND_APPROVAL"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"

    @property
    def final(self) -> bool:
        """Whether nothing more can be decided."""
        return self in (CaseState.APPROVED, CaseState.REJECTED)


class Verdict(StrEnum):
    """One reviewer's decision."""

    APPROVE = "approve"
    REJECT = "reject"


SUBJECT_TYPES: Final = frozenset({"natural_person", "legal_person"})
REVIEW_ROLE: Final = "review"
"""The operator role a reviewer's account holds."""
OPERATOR_ROLES: Final = frozenset({REVIEW_ROLE})


@dataclass(frozen=True)
class CaseSummary:
    """A case in the queue: no personal data."""

    case_id: str
    kind: CaseKind
    state: CaseState
    subject_type: str
    opened_at: float
    decided_at: float | None = None


@dataclass(frozen=True)
class CaseDecision:
    """One recorded decision: who, what, when and why."""

    reviewer_account_id: str
    verdict: Verdict
    reason: str = field(repr=False)
    at: float


@dataclass(frozen=True)
class CaseNote:
    """A reviewer's note on a case."""

    author_account_id: str
    text: str = field(repr=False)
    at: float


@dataclass(frozen=True)
class ReviewCase:
    """A whole case, its fields decrypted (handle as personal data)."""

    summary: CaseSummary
    account_id: str | None
    """The account the case is about; None for a recovery that matched no account."""
    reference: str
    fields: Mapping[str, str] = field(repr=False)
    document_ids: tuple[str, ...]
    first_approver: str | None
    decisions: tuple[CaseDecision, ...] = ()
    notes: tuple[CaseNote, ...] = ()

    @property
    def case_id(self) -> str:
        """The case's id."""
        return self.summary.case_id

    @property
    def kind(self) -> CaseKind:
        """The case's kind."""
        return self.summary.kind

    @property
    def state(self) -> CaseState:
        """The case's state."""
        return self.summary.state

    @property
    def final_reason(self) -> str:
        """The reason of the decision that ended the case ("" while open)."""
        if not self.state.final or not self.decisions:
            return ""
        return self.decisions[-1].reason


@dataclass(frozen=True)
class CasePage:
    """One page of the queue and the cursor of the next ("" at the end)."""

    cases: tuple[CaseSummary, ...]
    next_page_token: str


__all__ = [
    "OPERATOR_ROLES",
    "REVIEW_ROLE",
    "SUBJECT_TYPES",
    "CaseDecision",
    "CaseKind",
    "CaseNote",
    "CasePage",
    "CaseState",
    "CaseSummary",
    "ReviewCase",
    "Verdict",
]
