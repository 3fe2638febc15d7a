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
used to recover. Someone who lost the phone is pointed at manual review
(Unimplemented until the review service exists).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.errors import Unimplemented
from xiaohe.identity.server.shared.identifiers import IdType


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


@dataclass(frozen=True)
class Recovered:
    """The answer to a recovery, match or not."""

    login_name_masked: str
    reset_grant: str = field(repr=False)
    expires_in: int


class RecoveryFlow:
    """Finds accounts from identity details (steps in the module docstring)."""

    async def recover(self, cmd: RecoverCommand) -> Recovered:
        """Recover; the answer looks the same whether or not anything matched."""
        raise Unimplemented("this flow is being built")
