"""IdentityClient's consent and export methods against the in-process server (issue 14)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Harness
from tests.integration.privacy.test_export_rpc import (
    export_ticket,
    give_everything,
    validate,
    zhang,
)
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import FailedPrecondition, NotFound


async def test_the_sdk_exports_downloads_lists_and_withdraws(h: Harness) -> None:
    """I4, I2: `export_my_data` joins the chunks into the schema's document,
    `download_my_document` returns the owner's document, `list_consents` and
    `withdraw_consent` work, and refusals are the typed errors."""
    person = zhang()
    await give_everything(h, person)
    ticket = await export_ticket(h, person.phone)
    async with client_for(h) as identity:
        document = await identity.export_my_data(person.access_token, ticket)
        validate(document)
        assert document["account_id"] == person.account_id
        (listed,) = document["real_name"]["documents"]
        downloaded = await identity.download_my_document(person.access_token, listed["document_id"])
        assert downloaded.content_type == "image/png"
        assert downloaded.size == listed["size"]
        assert len(downloaded.content) == downloaded.size
        with pytest.raises(NotFound):
            await identity.download_my_document(person.access_token, "doc_" + "0" * 24)

        h.clock.advance(1)
        await identity.withdraw_consent(person.access_token, "identity_documents")
        history = await identity.list_consents(person.access_token)
        assert [c.action for c in history.consents][-1] == "withdraw"
        with pytest.raises(FailedPrecondition):
            await identity.withdraw_consent(person.access_token, "privacy_policy")
