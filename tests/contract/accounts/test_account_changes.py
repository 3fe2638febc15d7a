"""Changes a flow makes to an account: contact points and the accepted policy version."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract.accounts.conftest import (
    OTHER_PHONE,
    PHONE_E164,
    THIRD_PHONE,
    AccountsEnv,
    natural_command,
)
from xiaohe.identity.server.errors import AlreadyExists, Conflict
from xiaohe.identity.server.shared.identifiers import IdentifierKind, IdType

NEW_PHONE = "+8613700001111"


async def test_a_phone_is_replaced_with_its_identifier(env: AccountsEnv) -> None:
    """H1: the new phone logs in and the old one no longer does; the time of change is kept."""
    account_id = (await env.register(natural_command())).account_id
    env.clock.advance(10)
    await env.service.replace_contact(account_id, "phone", expected=PHONE_E164, new=NEW_PHONE)
    assert (await env.service.get_personal_data(account_id)).phone == NEW_PHONE
    assert await env.service.find_by_phone(PHONE_E164) is None
    found = await env.service.find_by_phone(NEW_PHONE)
    assert found is not None
    assert found.account_id == account_id
    assert found.phone_changed_at == pytest.approx(env.clock.now())


async def test_a_phone_held_by_another_account_is_already_exists(env: AccountsEnv) -> None:
    """A phone another account holds is refused, and nothing of this account changes."""
    first = (await env.register(natural_command())).account_id
    await env.register(
        natural_command(
            login_name="lisi", phone=OTHER_PHONE, id_type=IdType.UNSPECIFIED, id_number=""
        )
    )
    with pytest.raises(AlreadyExists) as caught:
        await env.service.replace_contact(
            first, "phone", expected=PHONE_E164, new="+86" + OTHER_PHONE
        )
    assert caught.value.field == "phone"
    assert (await env.service.get_personal_data(first)).phone == PHONE_E164


async def test_of_two_concurrent_phone_changes_exactly_one_wins(env: AccountsEnv) -> None:
    """H1: both read the same old phone; the second finds it changed and changes nothing."""
    account_id = (await env.register(natural_command())).account_id
    results = await asyncio.gather(
        env.service.replace_contact(account_id, "phone", expected=PHONE_E164, new=NEW_PHONE),
        env.service.replace_contact(
            account_id, "phone", expected=PHONE_E164, new="+86" + THIRD_PHONE
        ),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 1
    phone = (await env.service.get_personal_data(account_id)).phone
    assert phone in {NEW_PHONE, "+86" + THIRD_PHONE}
    assert {
        await env.service.find_by_phone(p) is None for p in (NEW_PHONE, "+86" + THIRD_PHONE)
    } == {
        True,
        False,
    }


async def test_an_email_is_bound_replaced_and_removed(env: AccountsEnv) -> None:
    """An email identifier follows the bound address."""
    account_id = (await env.register(natural_command())).account_id
    await env.service.replace_contact(account_id, "email", expected="", new="zs@example.cn")
    creds = await env.service.find_credentials(IdentifierKind.EMAIL, "zs@example.cn")
    assert creds is not None
    with pytest.raises(Conflict):
        await env.service.replace_contact(account_id, "email", expected="", new="x@example.cn")
    await env.service.replace_contact(account_id, "email", expected="zs@example.cn", new="")
    assert (await env.service.get_personal_data(account_id)).email == ""
    assert await env.service.find_credentials(IdentifierKind.EMAIL, "zs@example.cn") is None


async def test_every_email_change_records_its_time(env: AccountsEnv) -> None:
    """H1: binding, replacing and removing an email each record when (`email_changed_at`, the
    ChangePhone cooling-off of an email proof); a phone change leaves it alone."""
    account_id = (await env.register(natural_command())).account_id
    assert (await env.service.get_credentials(account_id)).email_changed_at is None
    steps = [("", "zs@example.cn"), ("zs@example.cn", "san@example.com"), ("san@example.com", "")]
    for expected, new in steps:
        env.clock.advance(100)
        await env.service.replace_contact(account_id, "email", expected=expected, new=new)
        creds = await env.service.get_credentials(account_id)
        assert creds.email_changed_at == pytest.approx(env.clock.now()), new
        assert creds.phone_changed_at is None
    emailed_at = env.clock.now()
    env.clock.advance(100)
    await env.service.replace_contact(account_id, "phone", expected=PHONE_E164, new=NEW_PHONE)
    creds = await env.service.get_credentials(account_id)
    assert creds.email_changed_at == pytest.approx(emailed_at)
    assert creds.phone_changed_at == pytest.approx(env.clock.now())


async def test_the_accepted_policy_version_only_rises(env: AccountsEnv) -> None:
    account_id = (await env.register(natural_command())).account_id
    await env.service.accept_policy_version(account_id, 3)
    await env.service.accept_policy_version(account_id, 2)
    assert (await env.service.get_credentials(account_id)).accepted_policy_version == 3
