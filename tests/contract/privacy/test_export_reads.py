"""The reads an export is built from, on SQLite and PostgreSQL (issue 14, SECURITY I4).

The export's integration test runs on SQLite; these run its date- and set-based
reads on both databases: messages by destination blind index from a binding time
on, audit records about an account, and the consent floor of policy versions.
"""

from __future__ import annotations

from tests.contract.delivery.test_outbox_dispatcher import AesGcmTestSealer
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.delivery.lifecycle import DeliveryLog
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.storage.database import Database

PHONE = "+8613812340001"
OTHER_PHONE = "+8613912340002"


async def test_messages_are_found_by_recipient_from_the_binding_on(
    database: Database, clock: FakeClock
) -> None:
    """I4: `sent_to` lists the messages to a destination's blind index created at or after
    the time given (when the account bound it), oldest first; messages to it before that
    (a former holder's), and to another destination, are not listed."""
    blind = BlindIndex(bytes(range(32)))

    def recipient(channel: str, destination: str) -> str:
        return blind.compute("phone" if channel == "SMS" else "email", destination)

    outbox = Outbox(database, AesGcmTestSealer(), clock, recipient_index=recipient)
    before = await outbox.enqueue("SMS", PHONE, "LOGIN", "code 123456 for the former holder")
    clock.advance(60)
    bound_at = clock.now()
    clock.advance(1)
    first = await outbox.enqueue("SMS", PHONE, "EXPORT_DATA", "code 234567")
    await outbox.enqueue("SMS", OTHER_PHONE, "LOGIN", "code 345678")
    clock.advance(1)
    second = await outbox.enqueue("SMS", PHONE, "notice", "your password was changed")

    found = await DeliveryLog(database, clock).sent_to([(recipient("SMS", PHONE), bound_at)])
    assert [m.message_id for m in found] == [first, second]
    assert before not in [m.message_id for m in found]
    assert [m.purpose for m in found] == ["EXPORT_DATA", "notice"]
    everything = await DeliveryLog(database, clock).sent_to([(recipient("SMS", PHONE), 0.0)])
    assert [m.message_id for m in everything] == [before, first, second]
    assert await DeliveryLog(database, clock).sent_to([]) == []


async def test_audit_records_about_an_account(database: Database, clock: FakeClock) -> None:
    """I4, I7: `concerning` returns the records the account acted in or that target it or
    the targets given (its sessions), oldest first, and none about another account."""
    log = AuditLog(database, clock, AuditKeys(bytes(range(32))))
    mine = "acc_" + "a" * 24
    theirs = "acc_" + "b" * 24
    await log.record("auth.login", mine, "ok", actor_client="bff", actor_account="")
    await log.record("session.revoke", "ses_mine", "ok", actor_client="bff", actor_account="")
    await log.record("auth.login", theirs, "ok", actor_client="bff", actor_account="")
    await log.record("document.read", "doc_x", "owner", actor_client="bff", actor_account=mine)
    await log.record("document.read", "doc_y", "owner", actor_client="bff", actor_account=theirs)

    found = await log.concerning(mine, ["ses_mine"])
    assert [(r.action, r.target) for r in found] == [
        ("auth.login", mine),
        ("session.revoke", "ses_mine"),
        ("document.read", "doc_x"),
    ]
    assert [r.target for r in await log.concerning(mine, ["ses_mine"], limit=1)] == ["doc_x"]


async def test_the_consent_floor_is_the_newest_version_that_changed_purposes(
    database: Database, clock: FakeClock
) -> None:
    """I3 (issue 14): a notify-only version keeps the floor of the version before it; a
    version that changes purposes raises it; a fresh store reads the same floor back."""
    store = PolicyStore(database, clock, cache_seconds=0)
    await store.ensure_seeded()
    assert (await store.current()).consent_floor == 1
    second = await store.publish("第二版：仅修订文字。", purposes_changed=False)
    assert (second.version, second.consent_floor) == (2, 1)
    assert (await PolicyStore(database, clock).current()).consent_floor == 1
    third = await store.publish("第三版：新增用途。")
    assert third.consent_floor == 3
    fourth = await store.publish("第四版：仅修订文字。", purposes_changed=False)
    read = await PolicyStore(database, clock).current()
    assert (fourth.consent_floor, read.version, read.consent_floor, read.purposes_changed) == (
        3,
        4,
        3,
        False,
    )
