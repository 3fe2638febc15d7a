"""DirectoryService and PrivacyService.ListDisclosures over real gRPC (issue 13 acceptance).

Real SQLite and the embedded Redis; a business client holds `directory`, field grants
and declared purposes; the person lists what was released about them.
"""

from __future__ import annotations

import grpc
import pytest

from tests.contract.faults import failing_writes, row_counts
from tests.integration.conftest import Harness
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    OTHER_PHONE,
    PHONE,
    login,
    register,
)
from tests.rpc_errors import Details, details_of
from xiaohe.identity.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    directory_pb2,
    directory_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
)

F = directory_pb2
BUSINESS_GRANTS = ("directory", "field:login_name", "field:phone", "purpose:order_fulfilment")


def directory(h: Harness) -> directory_pb2_grpc.DirectoryServiceAsyncStub:
    return directory_pb2_grpc.DirectoryServiceStub(h.channel)  # type: ignore[return-value]


def privacy(h: Harness) -> privacy_pb2_grpc.PrivacyServiceAsyncStub:
    return privacy_pb2_grpc.PrivacyServiceStub(h.channel)  # type: ignore[return-value]


async def failure(call: object) -> Details:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return details_of(caught.value)


async def business_client(h: Harness, *grants: str) -> tuple[tuple[str, str], ...]:
    return await h.client_metadata(*(grants or BUSINESS_GRANTS))


def ask(account_id: str, *fields: int, purpose: str = "order_fulfilment") -> F.GetIdentityRequest:
    return F.GetIdentityRequest(account_id=account_id, fields=list(fields), purpose=purpose)


async def list_disclosures(h: Harness, identifier: str) -> privacy_pb2.ListDisclosuresResponse:
    session = await login(h, identifier)
    return await privacy(h).ListDisclosures(
        privacy_pb2.ListDisclosuresRequest(),
        metadata=(*h.metadata, ("authorization", f"Bearer {session.access_token}")),
    )


async def test_granted_fields_only_masked_phone_and_the_disclosure_listed(h: Harness) -> None:
    """I6: a client with grants for login_name and masked phone gets exactly those; the
    person's ListDisclosures shows the release with the client's name and the purpose."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await business_client(h)
    answer = await directory(h).GetIdentity(
        ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME, F.IDENTITY_FIELD_PHONE), metadata=business
    )
    identity = answer.identity
    assert identity.account_id == account_id
    assert list(identity.released) == [F.IDENTITY_FIELD_LOGIN_NAME, F.IDENTITY_FIELD_PHONE]
    assert list(identity.masked) == [F.IDENTITY_FIELD_PHONE]
    assert identity.login_name == LOGIN_NAME
    assert identity.phone == "138****5678"
    # Nothing else is filled in.
    assert (identity.name, identity.id_number, identity.email, identity.real_name_level) == (
        "",
        "",
        "",
        0,
    )

    listed = await list_disclosures(h, LOGIN_NAME)
    assert len(listed.disclosures) == 1
    d = listed.disclosures[0]
    client_id = dict(business)["x-client-id"]
    assert d.client_id == client_id
    assert d.client_name.startswith("test-")
    assert list(d.fields) == ["login_name", "phone"]
    assert d.purpose == "order_fulfilment"
    assert abs(d.at.seconds - h.clock.now()) < 2


async def test_full_grant_releases_the_phone_unmasked(h: Harness) -> None:
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await business_client(
        h, "directory", "field:phone:full", "field:name", "purpose:kyc"
    )
    identity = (
        await directory(h).GetIdentity(
            ask(account_id, F.IDENTITY_FIELD_PHONE, F.IDENTITY_FIELD_NAME, purpose="kyc"),
            metadata=business,
        )
    ).identity
    assert identity.phone == PHONE
    assert identity.name == "张*"
    assert list(identity.masked) == [F.IDENTITY_FIELD_NAME]


async def test_a_field_without_its_grant_is_permission_denied_naming_it(h: Harness) -> None:
    """I6: asking for id_number without `field:id_number` is PERMISSION_DENIED naming the
    field; nothing is released or logged."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await business_client(h)
    d = await failure(
        directory(h).GetIdentity(
            ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME, F.IDENTITY_FIELD_ID_NUMBER),
            metadata=business,
        )
    )
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    assert "id_number" in d.message
    assert d.info["grant"] == "field:id_number"
    assert (await row_counts(h.container.database, "disclosures"))["disclosures"] == 0


@pytest.mark.parametrize("purpose", ["", "marketing"])
async def test_a_missing_or_undeclared_purpose_is_invalid_argument(
    h: Harness, purpose: str
) -> None:
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await business_client(h)
    d = await failure(
        directory(h).GetIdentity(
            ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME, purpose=purpose), metadata=business
        )
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in d.violations
    assert (await row_counts(h.container.database, "disclosures"))["disclosures"] == 0


async def test_the_wildcard_grant_opens_no_field(h: Harness) -> None:
    """`*` opens every RPC but no identity field: fields are always spelled out."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    d = await failure(
        directory(h).GetIdentity(ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME), metadata=h.metadata)
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT  # no purpose declared either
    business = await business_client(h, "*", "purpose:order_fulfilment")
    d = await failure(
        directory(h).GetIdentity(ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME), metadata=business)
    )
    assert d.code == grpc.StatusCode.PERMISSION_DENIED


async def test_unknown_account_is_not_found(h: Harness) -> None:
    business = await business_client(h)
    d = await failure(
        directory(h).GetIdentity(
            ask("acc_000000000000000000000000", F.IDENTITY_FIELD_LOGIN_NAME), metadata=business
        )
    )
    assert d.code == grpc.StatusCode.NOT_FOUND


async def test_batch_lists_unknown_ids_and_logs_one_disclosure_per_account(h: Harness) -> None:
    first = await register(h, LOGIN_NAME, PHONE)
    second = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    unknown = "acc_ffffffffffffffffffffffff"
    business = await business_client(h)
    answer = await directory(h).BatchGetIdentities(
        F.BatchGetIdentitiesRequest(
            account_ids=[first, unknown, second, first],
            fields=[F.IDENTITY_FIELD_LOGIN_NAME],
            purpose="order_fulfilment",
        ),
        metadata=business,
    )
    assert [(i.account_id, i.login_name) for i in answer.identities] == [
        (first, LOGIN_NAME),
        (second, OTHER_LOGIN_NAME),
    ]
    assert list(answer.not_found) == [unknown]
    assert (await row_counts(h.container.database, "disclosures"))["disclosures"] == 2
    assert len((await list_disclosures(h, OTHER_LOGIN_NAME)).disclosures) == 1


async def test_more_than_100_ids_is_invalid_argument(h: Harness) -> None:
    business = await business_client(h)
    d = await failure(
        directory(h).BatchGetIdentities(
            F.BatchGetIdentitiesRequest(
                account_ids=[f"acc_{i:024x}" for i in range(101)],
                fields=[F.IDENTITY_FIELD_LOGIN_NAME],
                purpose="order_fulfilment",
            ),
            metadata=business,
        )
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "account_ids" in d.violations


async def test_no_field_is_released_when_the_disclosure_log_cannot_be_written(
    h: Harness,
) -> None:
    """I6: the disclosure write is all-or-nothing with the release: it fails, the call is
    UNAVAILABLE, no field value is in the answer, no audit record of the release stays."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await business_client(h)
    before = await row_counts(h.container.database, "disclosures", "audit_log")
    async with failing_writes(h.container.database, "disclosures"):
        d = await failure(
            directory(h).GetIdentity(
                ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME, F.IDENTITY_FIELD_PHONE),
                metadata=business,
            )
        )
    assert d.code == grpc.StatusCode.UNAVAILABLE
    assert LOGIN_NAME not in d.message
    assert "5678" not in d.message
    after = await row_counts(h.container.database, "disclosures", "audit_log")
    assert after == before
    # Once the log can be written again, the same call succeeds and is logged.
    await directory(h).GetIdentity(ask(account_id, F.IDENTITY_FIELD_LOGIN_NAME), metadata=business)
    assert (await row_counts(h.container.database, "disclosures"))["disclosures"] == 1


async def test_list_disclosures_pages_newest_first(h: Harness) -> None:
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await business_client(h)
    for field in (F.IDENTITY_FIELD_LOGIN_NAME, F.IDENTITY_FIELD_PHONE, F.IDENTITY_FIELD_LOGIN_NAME):
        await directory(h).GetIdentity(ask(account_id, field), metadata=business)
        h.clock.advance(1)
    session = await login(h, LOGIN_NAME)
    user = (*h.metadata, ("authorization", f"Bearer {session.access_token}"))
    first = await privacy(h).ListDisclosures(
        privacy_pb2.ListDisclosuresRequest(page_size=2), metadata=user
    )
    assert [list(d.fields) for d in first.disclosures] == [["login_name"], ["phone"]]
    assert first.next_page_token
    rest = await privacy(h).ListDisclosures(
        privacy_pb2.ListDisclosuresRequest(page_size=2, page_token=first.next_page_token),
        metadata=user,
    )
    assert [list(d.fields) for d in rest.disclosures] == [["login_name"]]
    assert rest.next_page_token == ""
    bad = await failure(
        privacy(h).ListDisclosures(
            privacy_pb2.ListDisclosuresRequest(page_token="not-a-token"), metadata=user
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad.violations


async def test_set_client_grants_accepts_field_and_purpose_grants(h: Harness) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    business = await business_client(h)
    client_id = dict(business)["x-client-id"]
    changed = await admin.SetClientGrants(
        admin_pb2.SetClientGrantsRequest(
            client_id=client_id,
            grants=["directory", "field:email:full", "purpose:support"],
        ),
        metadata=h.metadata,
    )
    assert sorted(changed.client.grants) == ["directory", "field:email:full", "purpose:support"]
    d = await failure(
        admin.SetClientGrants(
            admin_pb2.SetClientGrantsRequest(client_id=client_id, grants=["field:shoe_size"]),
            metadata=h.metadata,
        )
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "grants" in d.violations
