"""The SDK's directory methods against the real server: fields by name, typed refusals,
the person's list of disclosures."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    OTHER_PHONE,
    PHONE,
    login,
    register,
)
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import (
    IdentityClient,
    IdentityField,
    InvalidArgument,
    PermissionDenied,
)


async def business_client(h: Harness) -> IdentityClient:
    client, secret = await h.container.clients.create(
        "orders", ["directory", "field:login_name", "field:phone", "purpose:order_fulfilment"]
    )
    return IdentityClient(
        f"127.0.0.1:{h.running.port}",
        client_id=client.client_id,
        client_secret=secret,
        channel=h.channel,
    )


async def test_get_identity_batch_and_list_disclosures_through_the_sdk(h: Harness) -> None:
    """I6: granted fields only, phone masked; refusals are typed; the person sees the releases."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    async with await business_client(h) as orders:
        identity = await orders.get_identity(
            account_id, ["login_name", IdentityField.IDENTITY_FIELD_PHONE], "order_fulfilment"
        )
        assert (identity.login_name, identity.phone) == (LOGIN_NAME, "138****5678")
        assert list(identity.masked) == [IdentityField.IDENTITY_FIELD_PHONE]
        h.clock.advance(1)

        batch = await orders.batch_get_identities(
            [account_id, other_id, "acc_ffffffffffffffffffffffff"],
            ["login_name"],
            "order_fulfilment",
        )
        assert [i.login_name for i in batch.identities] == [LOGIN_NAME, OTHER_LOGIN_NAME]
        assert list(batch.not_found) == ["acc_ffffffffffffffffffffffff"]

        with pytest.raises(PermissionDenied) as denied:
            await orders.get_identity(account_id, ["id_number"], "order_fulfilment")
        assert denied.value.required_grant == "field:id_number"
        with pytest.raises(InvalidArgument) as invalid:
            await orders.get_identity(account_id, ["login_name"], "marketing")
        assert "purpose" in invalid.value.violations
        with pytest.raises(ValueError, match="shoe_size"):
            await orders.get_identity(account_id, ["shoe_size"], "order_fulfilment")

    # The person's own app (another client, with the `privacy` grant) lists them.
    session = await login(h, LOGIN_NAME)
    async with client_for(h) as app:
        listed = await app.list_disclosures(session.access_token)
    assert [(d.client_name, list(d.fields), d.purpose) for d in listed.disclosures] == [
        ("orders", ["login_name"], "order_fulfilment"),
        ("orders", ["login_name", "phone"], "order_fulfilment"),
    ]
