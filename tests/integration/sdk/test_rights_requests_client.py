"""The SDK's rights-request methods against the real server: file, list, queue, resolve."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PHONE, login, register
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import FailedPrecondition, InvalidArgument
from xiaohe.identity.v1 import privacy_pb2


async def test_file_list_queue_and_resolve_through_the_sdk(h: Harness) -> None:
    """The person files and lists; the operator's client queues and answers; refusals are
    typed errors naming the field."""
    await register(h, LOGIN_NAME, PHONE)
    token = (await login(h, LOGIN_NAME)).access_token
    async with client_for(h) as identity:
        filed = await identity.file_request(
            token, privacy_pb2.RIGHTS_REQUEST_KIND_CORRECTION, "姓名写错了"
        )
        assert filed.state == privacy_pb2.RIGHTS_REQUEST_STATE_OPEN
        # Filed Mon 2026-09-21 (the harness clock): 9/22-24 = 1-3, 9/25-27 中秋, 9/28-30 = 4-6,
        # 10/1-7 国庆, 10/8-9 = 7-8, Sat 10/10 (调休) = 9, 10/12-16 = 10-14, Mon 10/19 = 15.
        assert filed.due_date == "2026-10-19"
        with pytest.raises(InvalidArgument) as bad:
            await identity.file_request(token, privacy_pb2.RIGHTS_REQUEST_KIND_UNSPECIFIED)
        assert list(bad.value.violations) == ["kind"]

        queue = await identity.list_rights_requests(
            state=privacy_pb2.RIGHTS_REQUEST_STATE_OPEN, page_size=10
        )
        assert [r.request_id for r in queue.requests] == [filed.request_id]
        assert not (await identity.list_rights_requests(overdue_only=True)).requests
        resolved = await identity.resolve_request(
            filed.request_id, privacy_pb2.RIGHTS_REQUEST_OUTCOME_FULFILLED, "已更正"
        )
        assert resolved.outcome == privacy_pb2.RIGHTS_REQUEST_OUTCOME_FULFILLED
        with pytest.raises(FailedPrecondition):
            await identity.resolve_request(
                filed.request_id, privacy_pb2.RIGHTS_REQUEST_OUTCOME_REFUSED, "不行"
            )
        [mine] = (await identity.list_requests(token)).requests
        assert (mine.request_id, mine.note, mine.account_id) == (filed.request_id, "已更正", "")
