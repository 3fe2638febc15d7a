"""AdminService.VerifyAuditChain and the acting account, through the in-process server."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PHONE, login, register, stubs
from tests.rpc_errors import details_of
from xiaohe.identity.server.audit.checkpoints import anchor_text
from xiaohe.identity.v1 import accounts_pb2, admin_pb2, admin_pb2_grpc


async def _create_clients(h: Harness, count: int) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    for n in range(count):
        await admin.CreateClient(
            admin_pb2.CreateClientRequest(name=f"web-{n}", grants=["codes"]), metadata=h.metadata
        )


async def test_verify_audit_chain_reports_checkpoints_truncation_and_anchor(h: Harness) -> None:
    """I7: the RPC reports the checkpoints it checked, checks an anchor, and calls rows cut off
    after a checkpoint truncation."""
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    await _create_clients(h, 3)
    checkpoint = await h.container.audit.checkpoint()
    assert checkpoint is not None
    assert checkpoint.seq == 3

    report = await admin.VerifyAuditChain(admin_pb2.VerifyAuditChainRequest(), metadata=h.metadata)
    assert report == admin_pb2.VerifyAuditChainResponse(
        intact=True, records_checked=3, checkpoints_checked=1, last_checkpoint_seq=3
    )
    anchor = admin_pb2.AuditChainAnchor(seq=3, mac=anchor_text(checkpoint.mac))
    anchored = await admin.VerifyAuditChain(
        admin_pb2.VerifyAuditChainRequest(anchor=anchor), metadata=h.metadata
    )
    assert anchored == report
    wrong = admin_pb2.AuditChainAnchor(seq=2, mac=checkpoint.mac)
    mismatch = await admin.VerifyAuditChain(
        admin_pb2.VerifyAuditChainRequest(anchor=wrong), metadata=h.metadata
    )
    assert (mismatch.intact, mismatch.first_broken_seq, mismatch.truncated) == (False, 2, False)

    with sqlite3.connect(h.data_dir / "identity.db") as conn:
        conn.execute("DELETE FROM audit_log WHERE seq >= 2")
    cut = await admin.VerifyAuditChain(admin_pb2.VerifyAuditChainRequest(), metadata=h.metadata)
    assert cut == admin_pb2.VerifyAuditChainResponse(
        intact=False,
        records_checked=1,
        first_broken_seq=2,
        checkpoints_checked=1,
        last_checkpoint_seq=3,
        truncated=True,
    )


async def test_verify_audit_chain_reports_a_forged_checkpoint(h: Harness) -> None:
    """I7: a checkpoint row altered in the database is named by the RPC."""
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    await _create_clients(h, 2)
    assert await h.container.audit.checkpoint() is not None
    with sqlite3.connect(h.data_dir / "identity.db") as conn:
        conn.execute("UPDATE audit_checkpoints SET seq = 9")
    report = await admin.VerifyAuditChain(admin_pb2.VerifyAuditChainRequest(), metadata=h.metadata)
    assert (report.intact, report.first_bad_checkpoint_seq) == (False, 9)
    assert (report.truncated, report.first_broken_seq, report.last_checkpoint_seq) == (False, 0, 0)


async def test_a_malformed_anchor_is_invalid_argument(h: Harness) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    anchor = admin_pb2.AuditChainAnchor(seq=0, mac="not-a-mac")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.VerifyAuditChain(
            admin_pb2.VerifyAuditChainRequest(anchor=anchor), metadata=h.metadata
        )
    details = details_of(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details.violations) == {"anchor.seq", "anchor.mac"}


async def test_records_name_the_signed_in_account_only_within_its_rpc(h: Harness) -> None:
    """I7: an RPC made with a user's access token is audited with that account beside the
    client; the next RPC without a token is not."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    session = await login(h, LOGIN_NAME)
    user = (*h.metadata, ("authorization", f"Bearer {session.access_token}"))
    await stubs(h).accounts.RevokeSession(
        accounts_pb2.RevokeSessionRequest(session_id=session.session_id), metadata=user
    )
    await _create_clients(h, 1)

    client_id = dict(h.metadata)["x-client-id"]
    (revoked,) = await h.container.audit.query(action="session.revoke")
    assert (revoked.actor_client, revoked.actor_account) == (client_id, account_id)
    assert revoked.target == session.session_id
    (created,) = await h.container.audit.query(action="client.create")
    assert (created.actor_client, created.actor_account) == (client_id, "")
    assert (await h.container.audit.verify_chain()).intact
