"""Views and the credential lookups the login service uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.contract.accounts.conftest import (
    ID_NUMBER,
    PHONE_E164,
    USCC,
    AccountsEnv,
    legal_command,
    natural_command,
)
from xiaohe.identity.server.accounts.models import AccountStatus, SubjectType
from xiaohe.identity.server.crypto.envelope import WrappedDataKey, field_aad
from xiaohe.identity.server.errors import NotFound
from xiaohe.identity.server.shared.identifiers import IdentifierKind
from xiaohe.identity.server.storage.database import utc


async def test_get_view_masks_contact_points(env: AccountsEnv) -> None:
    """[I6] The view shows the phone and email masked, never in full."""
    account_id = (await env.register(natural_command())).account_id
    email = "zhangsan@example.cn"
    # Bind an email the way a later flow will: encrypted under the account's data key.
    async with env.database.begin() as conn:
        wrapped = (
            await conn.execute(
                sa.text("SELECT data_key_wrapped FROM accounts WHERE account_id = :a"),
                {"a": account_id},
            )
        ).scalar_one()
        key = env.cipher.unwrap(WrappedDataKey.from_bytes(bytes(wrapped)))
        await conn.execute(
            sa.text("UPDATE accounts SET email_enc = :e WHERE account_id = :a"),
            {
                "e": env.cipher.encrypt_field(key, email, field_aad(account_id, "email")),
                "a": account_id,
            },
        )
    view = await env.service.get_view(account_id)
    assert view.phone_masked == "138****5678"
    assert view.email_masked == "z***@example.cn"
    assert PHONE_E164 not in repr(view)
    assert (await env.service.get_personal_data(account_id)).email == email
    with pytest.raises(NotFound):
        await env.service.get_view("acc_000000000000000000000000")


async def test_find_credentials_by_each_kind(env: AccountsEnv) -> None:
    """Login finds an account by login name, phone, ID number, USCC and (bound) email, and can
    replace its password hash."""
    person = (await env.register(natural_command())).account_id
    company = (await env.register(legal_command())).account_id
    email = "zhangsan@example.cn"
    async with env.database.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO identifiers (kind, blind_index, account_id, created_at) "
                "VALUES ('email', :b, :a, :t)"
            ),
            {"b": env.blind.compute("email", email), "a": person, "t": utc(env.clock.now())},
        )

    expected = [
        (IdentifierKind.LOGIN_NAME, "zhangsan", person),
        (IdentifierKind.PHONE, PHONE_E164, person),
        (IdentifierKind.ID_NUMBER, ID_NUMBER, person),
        (IdentifierKind.EMAIL, email, person),
        (IdentifierKind.LOGIN_NAME, "qinghai-tech", company),
        (IdentifierKind.USCC, USCC, company),
    ]
    for kind, value, account_id in expected:
        creds = await env.service.find_credentials(kind, value)
        assert creds is not None, kind
        assert creds.account_id == account_id
        assert creds.status == AccountStatus.ACTIVE
    creds = await env.service.find_credentials(IdentifierKind.USCC, USCC)
    assert creds is not None
    assert creds.subject_type is SubjectType.LEGAL_PERSON
    assert creds.login_name == "qinghai-tech"
    assert creds.accepted_policy_version == 1
    assert creds.real_name_level == 0

    # A value of one kind is not found under another, nor an unknown one, nor UNSPECIFIED.
    assert await env.service.find_credentials(IdentifierKind.ID_NUMBER, "zhangsan") is None
    assert await env.service.find_credentials(IdentifierKind.PHONE, "+8613900000000") is None
    assert await env.service.find_credentials(IdentifierKind.UNSPECIFIED, "zhangsan") is None

    by_phone = await env.service.find_by_phone(PHONE_E164)
    assert by_phone is not None
    assert by_phone.account_id == person
    assert "$argon2id$" not in repr(by_phone)

    # The login service stores rehashed (or reset) password hashes.
    new_hash = await env.hasher.hash("Another-Long-Passphrase-9")
    env.clock.advance(60)
    await env.service.set_password_hash(person, new_hash)
    creds = await env.service.get_credentials(person)
    assert creds.password_hash == new_hash
    with pytest.raises(NotFound):
        await env.service.set_password_hash("acc_000000000000000000000000", new_hash)


async def test_conditional_password_hash_update_with_a_stale_hash_changes_nothing(
    env: AccountsEnv,
) -> None:
    """A rehash conditional on the hash it verified cannot overwrite a newer password hash."""
    person = (await env.register(natural_command())).account_id
    original = (await env.service.get_credentials(person)).password_hash
    changed = await env.hasher.hash("Another-Long-Passphrase-9")
    # A password change lands first (unconditional) ...
    env.clock.advance(60)
    assert await env.service.set_password_hash(person, changed) is True
    # ... then a rehash of the old password, conditional on the old hash, loses the race.
    rehash = await env.hasher.hash("Third-Long-Passphrase-7")
    assert await env.service.set_password_hash(person, rehash, expected_old_hash=original) is False
    assert (await env.service.get_credentials(person)).password_hash == changed
    # Conditional on the hash actually stored, the update happens.
    assert await env.service.set_password_hash(person, rehash, expected_old_hash=changed) is True
    assert (await env.service.get_credentials(person)).password_hash == rehash
    # With an expected hash, an unknown account is simply "not changed", not NotFound.
    unknown = "acc_000000000000000000000000"
    assert await env.service.set_password_hash(unknown, rehash, expected_old_hash=rehash) is False
    with pytest.raises(NotFound):
        await env.service.get_credentials("acc_000000000000000000000000")
