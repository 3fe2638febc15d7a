"""What the manual-review branches of ChangePhone and RecoverAccount share (人工核验).

Both take identity documents (`document_ids` from RealNameService.UploadDocument),
check that each belongs to whoever may use it (the account, or the holder of the
phone being proven, `DocumentService.phone_owner`), open a case in the review
queue inside their unit of work, and tell the applicant's new phone when the case
is rejected (`review_rejected`, a notice that names no account).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from xiaohe.identity.server.accounts.models import PersonalData, SubjectType
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.flows.realname import ReviewQueue
from xiaohe.identity.server.flows.review import ReviewDocuments
from xiaohe.identity.server.shared.validation import MAX_IDENTIFIER_CHARS, Violations

MAX_DOCUMENTS: Final = 10
"""Documents one application may name."""
DOCUMENTS_FIELD: Final = "manual_review.document_ids"
REVIEW_REJECTED_NOTICE: Final = "review_rejected"


def check_document_ids(v: Violations, field_name: str, document_ids: Sequence[str]) -> None:
    """Record violations for a missing, oversized or malformed list of document ids."""
    if not document_ids:
        v.add(field_name, "must name at least one document uploaded with UploadDocument")
    elif len(document_ids) > MAX_DOCUMENTS:
        v.add(field_name, f"must name at most {MAX_DOCUMENTS} documents")
    elif any(not d or len(d) > MAX_IDENTIFIER_CHARS or not d.isprintable() for d in document_ids):
        v.add(field_name, "must hold document ids from UploadDocument")


async def check_documents(
    documents: ReviewDocuments, document_ids: Sequence[str], owners: set[str], field_name: str
) -> None:
    """InvalidArgument unless every document exists and belongs to one of `owners`.

    A document of someone else and no document at all get the same answer, so
    the check tells nobody which ids exist.
    """
    for document_id in document_ids:
        info = await documents.info(document_id)
        if info is None or not any(
            hmac.compare_digest(info.owner.encode("utf-8"), owner.encode("utf-8"))
            for owner in owners
        ):
            raise InvalidArgument(
                FieldViolation(
                    field_name,
                    "must name documents uploaded by this account or with the new phone's ticket",
                )
            )


def identity_fields(subject_type: SubjectType, data: PersonalData) -> dict[str, str]:
    """The identity an account holds, as review fields (what the documents must show)."""
    if subject_type is SubjectType.NATURAL_PERSON:
        held = {"name": data.name, "id_type": data.id_type.name, "id_number": data.id_number}
        if not data.id_number:
            held.pop("id_type")
    else:
        held = {
            "organization_name": data.organization_name,
            "organization_type": data.organization_type,
            "uscc": data.uscc,
            "representative_type": data.representative_type,
            "representative_name": data.representative_name,
            "representative_id_type": data.representative_id_type.name,
            "representative_id_number": data.representative_id_number,
        }
        if not data.representative_id_number:
            held.pop("representative_id_type")
    return {name: value for name, value in held.items() if value}


__all__ = [
    "DOCUMENTS_FIELD",
    "MAX_DOCUMENTS",
    "REVIEW_REJECTED_NOTICE",
    "ReviewQueue",
    "check_document_ids",
    "check_documents",
    "identity_fields",
]
