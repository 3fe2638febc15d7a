"""Grants: which RPCs a client may call, and what else it is trusted with.

A client holds a set of grant names. Each RPC needs one grant; `*` is every
grant. `forward-end-user` is not an RPC grant: it makes the server trust the
end-user IP, agent and device metadata the client forwards. `audience:NAME`
lets the client ask for access tokens for audience NAME; every client may ask
for the default audience.

The directory (DirectoryService) needs more than its RPC grant: `field:NAME`
releases identity field NAME masked and `field:NAME:full` in full (one of
`IDENTITY_FIELDS`); `purpose:NAME` declares a purpose the client may state when
it asks. `*` opens every RPC but no field and no purpose: what a business
system may learn about people is always spelled out (data minimisation).
"""

from __future__ import annotations

import re

ALL = "*"
FORWARD_END_USER = "forward-end-user"

# Full gRPC method name -> the grant it needs.
METHOD_GRANTS: dict[str, str] = {
    "/xiaohe.identity.v1.CodeService/IssueCode": "codes",
    "/xiaohe.identity.v1.CodeService/VerifyCode": "codes",
    "/xiaohe.identity.v1.AuthService/Login": "auth",
    "/xiaohe.identity.v1.AuthService/Refresh": "auth",
    "/xiaohe.identity.v1.AuthService/Logout": "auth",
    "/xiaohe.identity.v1.AuthService/ValidateToken": "validate",
    "/xiaohe.identity.v1.AuthService/GetSigningKeys": "validate",
    "/xiaohe.identity.v1.AccountService/Register": "accounts",
    "/xiaohe.identity.v1.AccountService/GetAccount": "accounts",
    "/xiaohe.identity.v1.AccountService/ListSessions": "accounts",
    "/xiaohe.identity.v1.AccountService/RevokeSession": "accounts",
    "/xiaohe.identity.v1.AccountService/ChangePassword": "accounts",
    "/xiaohe.identity.v1.AccountService/ResetPassword": "accounts",
    "/xiaohe.identity.v1.AccountService/BindPhone": "accounts",
    "/xiaohe.identity.v1.AccountService/BindEmail": "accounts",
    "/xiaohe.identity.v1.AccountService/UnbindEmail": "accounts",
    "/xiaohe.identity.v1.AccountService/ChangePhone": "accounts",
    "/xiaohe.identity.v1.RecoveryService/RecoverAccount": "recovery",
    "/xiaohe.identity.v1.PrivacyService/GetPolicy": "privacy",
    "/xiaohe.identity.v1.PrivacyService/AcceptPolicy": "privacy",
    "/xiaohe.identity.v1.AdminService/CreateClient": "admin",
    "/xiaohe.identity.v1.AdminService/ListClients": "admin",
    "/xiaohe.identity.v1.AdminService/RevokeClient": "admin",
    "/xiaohe.identity.v1.AdminService/SetClientGrants": "admin",
    "/xiaohe.identity.v1.AdminService/VerifyAuditChain": "admin",
    # -- delivery receipts (issue 10) --
    "/xiaohe.identity.v1.AdminService/GetDelivery": "admin",
    "/xiaohe.identity.v1.CarrierHookService/ReportDelivery": "carrier-hooks",
    "/xiaohe.identity.v1.CarrierHookService/ReportRecycledNumber": "carrier-hooks",
    # -- end delivery receipts --
    # SMS-pumping defence: operators list and lift prefix blocks.
    "/xiaohe.identity.v1.AdminService/ListPrefixBlocks": "admin",
    "/xiaohe.identity.v1.AdminService/LiftPrefixBlock": "admin",
    # Second factor (TOTP).
    "/xiaohe.identity.v1.AuthService/CompleteMfa": "auth",
    "/xiaohe.identity.v1.AccountService/EnrollTotp": "accounts",
    "/xiaohe.identity.v1.AccountService/ConfirmTotp": "accounts",
    "/xiaohe.identity.v1.AccountService/DisableTotp": "accounts",
    # Real-name verification and its documents.
    "/xiaohe.identity.v1.RealNameService/UploadDocument": "realname",
    "/xiaohe.identity.v1.RealNameService/SubmitNaturalPerson": "realname",
    "/xiaohe.identity.v1.RealNameService/SubmitLegalPerson": "realname",
    "/xiaohe.identity.v1.RealNameService/GetRealNameStatus": "realname",
    # Manual review: the console's client; every call also needs a reviewer's token.
    "/xiaohe.identity.v1.ReviewService/ListCases": "review",
    "/xiaohe.identity.v1.ReviewService/GetCase": "review",
    "/xiaohe.identity.v1.ReviewService/StreamDocument": "review",
    "/xiaohe.identity.v1.ReviewService/DecideCase": "review",
    "/xiaohe.identity.v1.ReviewService/AddNote": "review",
    # Business systems: the directory (fields also need `field:NAME` grants) and the
    # revocation stream; the person's list of disclosures.
    "/xiaohe.identity.v1.DirectoryService/GetIdentity": "directory",
    "/xiaohe.identity.v1.DirectoryService/BatchGetIdentities": "directory",
    "/xiaohe.identity.v1.DirectoryService/WatchRevocations": "validate",
    "/xiaohe.identity.v1.PrivacyService/ListDisclosures": "privacy",
    # -- issue 14: rights requests --
    "/xiaohe.identity.v1.PrivacyService/FileRequest": "privacy",
    "/xiaohe.identity.v1.PrivacyService/ListRequests": "privacy",
    "/xiaohe.identity.v1.AdminService/ListRightsRequests": "admin",
    "/xiaohe.identity.v1.AdminService/ResolveRequest": "admin",
    # -- end rights requests --
    # -- issue 14: deactivation --
    "/xiaohe.identity.v1.AccountService/Deactivate": "accounts",
    # -- end deactivation --
    # -- issue 14: consent and export --
    "/xiaohe.identity.v1.PrivacyService/WithdrawConsent": "privacy",
    "/xiaohe.identity.v1.PrivacyService/ListConsents": "privacy",
    "/xiaohe.identity.v1.PrivacyService/ExportMyData": "privacy",
    "/xiaohe.identity.v1.PrivacyService/StreamMyDocument": "privacy",
    # -- end consent and export --
}

# Methods any caller may use without credentials.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

KNOWN_GRANTS = frozenset(METHOD_GRANTS.values()) | {ALL, FORWARD_END_USER}

AUDIENCE_PREFIX = "audience:"
AUDIENCE_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")


FIELD_PREFIX = "field:"
FULL_SUFFIX = ":full"
PURPOSE_PREFIX = "purpose:"
PURPOSE_SHAPE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
"""A purpose name: lower case, digits, `_ . -`, at most 40 characters (a column's width)."""

IDENTITY_FIELDS = (
    "subject_type",
    "login_name",
    "real_name_level",
    "name",
    "id_type",
    "id_number",
    "phone",
    "email",
    "organization_name",
    "uscc",
)
"""The identity fields a client may be granted, as DirectoryService's IdentityField names them."""


def is_known_grant(grant: str) -> bool:
    """Whether grant names an RPC grant, `*`, `forward-end-user`, `audience:NAME`,
    `field:NAME[:full]` or `purpose:NAME`."""
    if grant.startswith(AUDIENCE_PREFIX):
        return AUDIENCE_SHAPE.fullmatch(grant[len(AUDIENCE_PREFIX) :]) is not None
    if grant.startswith(FIELD_PREFIX):
        name = grant[len(FIELD_PREFIX) :].removesuffix(FULL_SUFFIX)
        return name in IDENTITY_FIELDS
    if grant.startswith(PURPOSE_PREFIX):
        return PURPOSE_SHAPE.fullmatch(grant[len(PURPOSE_PREFIX) :]) is not None
    return grant in KNOWN_GRANTS


def field_access(grants: frozenset[str], field: str) -> str | None:
    """How a client may receive an identity field: "full", "masked", or None (not at all)."""
    if FIELD_PREFIX + field + FULL_SUFFIX in grants:
        return "full"
    if FIELD_PREFIX + field in grants:
        return "masked"
    return None


def declared_purposes(grants: frozenset[str]) -> frozenset[str]:
    """The purposes declared for a client (its `purpose:NAME` grants)."""
    return frozenset(g[len(PURPOSE_PREFIX) :] for g in grants if g.startswith(PURPOSE_PREFIX))


def allows_audience(grants: frozenset[str], audience: str, default_audience: str) -> bool:
    """Whether a client with these grants may obtain tokens for this audience."""
    return audience == default_audience or ALL in grants or AUDIENCE_PREFIX + audience in grants


def required_grant(method: str) -> str | None:
    """The grant a full method name needs, or None when no grant opens it."""
    return METHOD_GRANTS.get(method)


def allows(grants: frozenset[str], method: str) -> bool:
    """Whether a client with these grants may call the method."""
    needed = METHOD_GRANTS.get(method)
    if needed is None:
        return False
    return ALL in grants or needed in grants


def trusts_end_user_metadata(grants: frozenset[str]) -> bool:
    """Whether forwarded end-user IP/agent/device metadata from this client is believed."""
    return ALL in grants or FORWARD_END_USER in grants
