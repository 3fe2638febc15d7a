"""Rights requests over real gRPC, the overdue gauge and `xiaohe-identity requests list`.

The server's clock starts on Friday 2025-09-26, the Friday before the National
Day holiday (issue 14's acceptance case), and is moved past the due date.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import grpc
import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, login, register, stubs
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.cli import main
from xiaohe.identity.server.clock import FakeClock, SystemClock
from xiaohe.identity.server.privacy.calendar import SHANGHAI
from xiaohe.identity.v1 import (
    accounts_pb2,
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
)

FILED_AT = datetime(2025, 9, 26, 10, 0, tzinfo=SHANGHAI).timestamp()
LATE_AT = datetime(2025, 10, 24, 0, 0, tzinfo=SHANGHAI).timestamp()
DETAIL = "请删除我的账号和手机号 13800138000 的全部记录"


@pytest.fixture
def clock() -> FakeClock:
    """The harness clock, on the Friday before National Day 2025."""
    return FakeClock(FILED_AT)


def as_user(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The harness credentials and the person's bearer token."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


async def failure(call: object) -> Details:
    """The decoded error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return details_of(caught.value)


def overdue_gauge(h: Harness) -> float:
    """xiaohe_privacy_requests_overdue as this worker exposes it."""
    for line in h.container.metrics.render().decode().splitlines():
        if line.startswith("xiaohe_privacy_requests_overdue "):
            return float(line.split()[1])
    raise AssertionError("the gauge is not exposed")


async def test_file_list_become_overdue_and_resolve(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The person files a DELETION (due 2025-10-23, late from 10-24 00:00 Shanghai) and lists
    it; past the due date the gauge is 1 and operators see it overdue; a refusal needs a note,
    and the person then sees the outcome and the note; the gauge is 0 again. The person's
    text never reaches a log."""
    caplog.set_level(logging.DEBUG)
    privacy = privacy_pb2_grpc.PrivacyServiceStub(h.channel)
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    account_id = await register(h, LOGIN_NAME, PHONE)
    token = (await login(h, LOGIN_NAME)).access_token

    filed = (
        await privacy.FileRequest(
            privacy_pb2.FileRequestRequest(
                kind=privacy_pb2.RIGHTS_REQUEST_KIND_DELETION, detail=DETAIL
            ),
            metadata=as_user(h, token),
        )
    ).request
    assert filed.request_id.startswith("rrq_")
    assert (filed.kind, filed.state, filed.detail) == (
        privacy_pb2.RIGHTS_REQUEST_KIND_DELETION,
        privacy_pb2.RIGHTS_REQUEST_STATE_OPEN,
        DETAIL,
    )
    assert (filed.due_date, filed.late_at.seconds, filed.overdue) == ("2025-10-23", LATE_AT, False)
    assert filed.account_id == ""  # whose it is: operators only

    await h.container.rights_requests.refresh_overdue()
    assert overdue_gauge(h) == 0
    h.clock.advance(LATE_AT - h.clock.now())
    await h.container.rights_requests.refresh_overdue()
    assert overdue_gauge(h) == 1

    late = await admin.ListRightsRequests(
        admin_pb2.ListRightsRequestsRequest(overdue_only=True), metadata=h.metadata
    )
    [seen] = late.requests
    assert (seen.request_id, seen.account_id, seen.overdue, seen.detail) == (
        filed.request_id,
        account_id,
        True,
        DETAIL,
    )

    refused_without_reason = await failure(
        admin.ResolveRequest(
            admin_pb2.ResolveRequestRequest(
                request_id=filed.request_id, outcome=privacy_pb2.RIGHTS_REQUEST_OUTCOME_REFUSED
            ),
            metadata=h.metadata,
        )
    )
    assert refused_without_reason.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "note" in refused_without_reason.violations
    resolved = (
        await admin.ResolveRequest(
            admin_pb2.ResolveRequestRequest(
                request_id=filed.request_id,
                outcome=privacy_pb2.RIGHTS_REQUEST_OUTCOME_REFUSED,
                note="账号仍有未结清的订单，结清后可再申请。",
            ),
            metadata=h.metadata,
        )
    ).request
    assert (resolved.state, resolved.overdue, resolved.resolved_by) == (
        privacy_pb2.RIGHTS_REQUEST_STATE_RESOLVED,
        False,
        h.metadata[0][1],
    )
    again = await failure(
        admin.ResolveRequest(
            admin_pb2.ResolveRequestRequest(
                request_id=filed.request_id, outcome=privacy_pb2.RIGHTS_REQUEST_OUTCOME_FULFILLED
            ),
            metadata=h.metadata,
        )
    )
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION

    token = (await login(h, LOGIN_NAME)).access_token  # the first one expired meanwhile
    mine = await privacy.ListRequests(privacy_pb2.ListRequestsRequest(), metadata=as_user(h, token))
    [answered] = mine.requests
    assert (answered.outcome, answered.note) == (
        privacy_pb2.RIGHTS_REQUEST_OUTCOME_REFUSED,
        "账号仍有未结清的订单，结清后可再申请。",
    )
    await h.container.rights_requests.refresh_overdue()
    assert overdue_gauge(h) == 0
    assert not [r for r in caplog.records if "13800138000" in r.getMessage()]


async def test_bad_requests_get_clear_errors(h: Harness) -> None:
    """Unspecified kind, a too long text, a bad page token, no signed-in person, an empty or
    unknown request id, an unspecified outcome: each a clear error, never INTERNAL."""
    privacy = privacy_pb2_grpc.PrivacyServiceStub(h.channel)
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    await register(h, LOGIN_NAME, PHONE)
    user = as_user(h, (await login(h, LOGIN_NAME)).access_token)
    cases = [
        (privacy.FileRequest(privacy_pb2.FileRequestRequest(), metadata=user), "kind"),
        (
            privacy.FileRequest(
                privacy_pb2.FileRequestRequest(
                    kind=privacy_pb2.RIGHTS_REQUEST_KIND_ACCESS, detail="长" * 2001
                ),
                metadata=user,
            ),
            "detail",
        ),
        (
            privacy.ListRequests(privacy_pb2.ListRequestsRequest(page_token="x!"), metadata=user),
            "page_token",
        ),
        (
            admin.ResolveRequest(
                admin_pb2.ResolveRequestRequest(
                    outcome=privacy_pb2.RIGHTS_REQUEST_OUTCOME_FULFILLED
                ),
                metadata=h.metadata,
            ),
            "request_id",
        ),
        (
            admin.ResolveRequest(
                admin_pb2.ResolveRequestRequest(request_id="rrq_" + "0" * 24),
                metadata=h.metadata,
            ),
            "outcome",
        ),
        (
            admin.ListRightsRequests(
                admin_pb2.ListRightsRequestsRequest(state=99), metadata=h.metadata
            ),
            "state",
        ),
    ]
    for call, field in cases:
        d = await failure(call)
        assert (d.code, field in d.violations) == (grpc.StatusCode.INVALID_ARGUMENT, True), d
    no_user = await failure(
        privacy.FileRequest(
            privacy_pb2.FileRequestRequest(kind=privacy_pb2.RIGHTS_REQUEST_KIND_ACCESS),
            metadata=h.metadata,
        )
    )
    assert no_user.code == grpc.StatusCode.UNAUTHENTICATED
    unknown = await failure(
        admin.ResolveRequest(
            admin_pb2.ResolveRequestRequest(
                request_id="rrq_" + "0" * 24, outcome=privacy_pb2.RIGHTS_REQUEST_OUTCOME_FULFILLED
            ),
            metadata=h.metadata,
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND


async def test_the_cli_lists_overdue_requests(
    h: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`requests list --overdue` (on the real clock) lists the request filed on 2025-09-26
    and not one filed today, which is not due yet; without --overdue both are listed, soonest
    due first, and no text is printed."""
    privacy = privacy_pb2_grpc.PrivacyServiceStub(h.channel)
    await register(h, LOGIN_NAME, PHONE)
    token = (await login(h, LOGIN_NAME)).access_token
    file = privacy_pb2.FileRequestRequest(kind=privacy_pb2.RIGHTS_REQUEST_KIND_COPY, detail=DETAIL)
    old = (await privacy.FileRequest(file, metadata=as_user(h, token))).request
    h.clock.advance(SystemClock().now() - h.clock.now())
    token = (await login(h, LOGIN_NAME)).access_token  # the first session expired meanwhile
    new = (await privacy.FileRequest(file, metadata=as_user(h, token))).request
    monkeypatch.setenv("XIAOHE_IDENTITY_DATA_DIR", str(h.data_dir))
    capsys.readouterr()

    assert await asyncio.to_thread(main, ["requests", "list", "--overdue"]) == 0
    out = capsys.readouterr().out
    [listed] = json.loads(out)
    assert (listed["request_id"], listed["due_date"], listed["overdue"], listed["kind"]) == (
        old.request_id,
        "2025-10-23",
        True,
        "copy",
    )
    assert "13800138000" not in out

    assert await asyncio.to_thread(main, ["requests", "list"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert [(r["request_id"], r["overdue"]) for r in every] == [
        (old.request_id, True),
        (new.request_id, False),
    ]


async def test_a_session_waiting_for_consent_may_still_file_and_list(h: Harness) -> None:
    """I3 restricts a session until the person accepts a changed policy; the rights to ask
    for deletion or to complain do not wait for that acceptance (GetAccount still refuses)."""
    privacy = privacy_pb2_grpc.PrivacyServiceStub(h.channel)
    await register(h, LOGIN_NAME, PHONE)
    await h.container.revocations.wait_ready()
    h.clock.advance(60)
    await h.container.policies.publish("小禾隐私政策（第二版）")
    restricted = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
        ),
        metadata=h.metadata,
    )
    assert restricted.next_step == auth_pb2.NEXT_STEP_CONSENT_REQUIRED
    user = as_user(h, restricted.session.access_token)
    refused = await failure(
        stubs(h).accounts.GetAccount(accounts_pb2.GetAccountRequest(), metadata=user)
    )
    assert refused.reason == "CONSENT_REQUIRED"
    filed = await privacy.FileRequest(
        privacy_pb2.FileRequestRequest(kind=privacy_pb2.RIGHTS_REQUEST_KIND_DELETION),
        metadata=user,
    )
    listed = await privacy.ListRequests(privacy_pb2.ListRequestsRequest(), metadata=user)
    assert [r.request_id for r in listed.requests] == [filed.request.request_id]
