"""The account lifecycle against `xiaohe-identity serve`, through the SDK, as a front end runs it.

register → `policy publish` → login gives CONSENT_REQUIRED and a restricted session
→ AcceptPolicy → refresh → normal session; reset by SMS and by email; change the
password ending the other sessions; bind an email; change the phone by the old phone
and by the email; recover a natural and a legal person. After each change the old
tokens are refused within a second and a notice is in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, ServedProcess, start_serve
from xiaohe.identity.client import ConsentRequired, IdentityClient, InvalidCredentials
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, common_pb2, recovery_pb2

SMS = common_pb2.CHANNEL_SMS
EMAIL = common_pb2.CHANNEL_EMAIL
PHONE = "+8613812345678"
NEW_PHONE = "+8613700001111"
THIRD_PHONE = "+8613700002222"
ORG_PHONE = "+8613987654321"
ADDRESS = "zhang.wei@example.cn"
ID_NUMBER = "11010519491231002X"
USCC = "91350100M000100Y43"
REP_ID = "440524188001010014"
PASSWORDS = iter(
    [f"Qingshan-Lvshui-{n}-Tiankong" for n in range(2026, 2050)]
)  # a fresh password for every change
FIRST_PASSWORD = next(PASSWORDS)


class Front:
    """An SDK client over one served process, reading codes from its dev outbox."""

    def __init__(self, served: ServedProcess, client: IdentityClient) -> None:
        self.served = served
        self.client = client

    async def ticket(self, destination: str, purpose: int, channel: int = SMS) -> str:
        """Issue a code, read it from the outbox, verify it into a ticket."""
        box = "sms" if channel == SMS else "email"
        before = len(self.served.outbox(box))
        await self.client.issue_code(channel, destination, purpose)
        line = await self.wait_outbox(box, before + 1)
        assert line["to"] == destination
        code = re.search(r"\d{6}", line["text"])
        assert code is not None
        return (await self.client.verify_code(channel, destination, purpose, code.group(0))).ticket

    async def wait_outbox(self, box: str, count: int) -> dict[str, str]:
        await _poll(lambda: len(self.served.outbox(box)) >= count)
        lines = self.served.outbox(box)
        assert len(lines) >= count
        return lines[count - 1]

    def notices(self, box: str = "sms") -> list[dict[str, str]]:
        return [line for line in self.served.outbox(box) if line["purpose"] == "NOTICE"]

    async def login(self, identifier: str, password: str) -> auth_pb2.LoginResponse:
        return await self.client.login_with_password(identifier, password)

    async def refused_within_a_second(self, *tokens: str) -> None:
        """ValidateToken says invalid for every token within one second."""
        deadline = time.monotonic() + 1.0
        pending = list(tokens)
        while pending and time.monotonic() < deadline:
            pending = [t for t in pending if (await self.client.validate_token(t)).valid]
            if pending:
                await asyncio.sleep(0.05)
        assert not pending, "a token of an ended session was still valid after one second"

    async def notice_arrives(self, count_before: int, box: str = "sms") -> dict[str, str]:
        await _poll(lambda: len(self.notices(box)) > count_before)
        notices = self.notices(box)
        assert len(notices) > count_before, f"no new notice in the {box} outbox"
        return notices[-1]


async def _poll(ready: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until `ready()` holds (the dispatcher writes the outbox files a moment later)."""
    for _ in range(int(seconds / 0.05)):
        if ready():
            return
        await asyncio.sleep(0.05)


def _publish_policy(served: ServedProcess, tmp_path: Path) -> int:
    text = tmp_path / "policy-v2.md"
    text.write_text("# 小禾企服网用户隐私政策（第二版）\n\n新增了使用目的。\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env["XIAOHE_IDENTITY_DATA_DIR"] = str(served.data_dir)
    result = subprocess.run(
        [CLI, "policy", "publish", str(text)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(json.loads(result.stdout)["version"])


@pytest.fixture
def served(tmp_path: Path, serve_factory: list[ServedProcess]) -> ServedProcess:
    server = start_serve(
        tmp_path / "var",
        XIAOHE_IDENTITY_CODE_COOLDOWN_SECONDS="0",
        XIAOHE_IDENTITY_CODE_PER_DESTINATION_HOUR="1000",
        XIAOHE_IDENTITY_CODE_PER_DESTINATION_DAY="1000",
        XIAOHE_IDENTITY_CODE_PER_IP_HOUR="1000",
        XIAOHE_IDENTITY_PHONE_CHANGE_COOLING_OFF_SECONDS="0",
    )
    serve_factory.append(server)
    return server


async def test_the_whole_lifecycle(served: ServedProcess, tmp_path: Path) -> None:
    """I3, P3, T3, H1, H2: the acceptance walk of the lifecycle flows."""
    creds = served.metadata
    async with IdentityClient(
        served.target, client_id=creds[0][1], client_secret=creds[1][1]
    ) as client:
        front = Front(served, client)

        # Register a natural and a legal person.
        person = await client.register(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name="zhang.wei",
            password=FIRST_PASSWORD,
            phone=PHONE,
            phone_ticket=await front.ticket(PHONE, common_pb2.PURPOSE_REGISTER),
            accepted_policy_version=1,
            natural_person=accounts_pb2.NaturalPersonProfile(
                name="张伟", id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=ID_NUMBER
            ),
        )
        org_password = next(PASSWORDS)
        await client.register(
            subject_type=common_pb2.SUBJECT_TYPE_LEGAL_PERSON,
            login_name="fuzhou-tech",
            password=org_password,
            phone=ORG_PHONE,
            phone_ticket=await front.ticket(ORG_PHONE, common_pb2.PURPOSE_REGISTER),
            accepted_policy_version=1,
            legal_person=accounts_pb2.LegalPersonProfile(
                organization_name="福州示例科技有限公司",
                uscc=USCC,
                organization_type=common_pb2.ORGANIZATION_TYPE_ENTERPRISE,
                representative_type=common_pb2.REPRESENTATIVE_TYPE_LEGAL_REPRESENTATIVE,
                representative_name="李娜",
                representative_id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
                representative_id_number=REP_ID,
            ),
        )

        # A new policy: the next login is restricted until the person accepts it.
        version = _publish_policy(served, tmp_path)
        assert version == 2
        deadline = time.monotonic() + 10  # each worker caches the current version for 5 s
        restricted = await front.login("zhang.wei", FIRST_PASSWORD)
        while (
            restricted.next_step != auth_pb2.NEXT_STEP_CONSENT_REQUIRED
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.5)
            restricted = await front.login("zhang.wei", FIRST_PASSWORD)
        assert restricted.next_step == auth_pb2.NEXT_STEP_CONSENT_REQUIRED
        with pytest.raises(ConsentRequired):
            await client.list_sessions(restricted.session.access_token)
        assert not (await client.validate_token(restricted.session.access_token)).valid
        accepted = await client.accept_policy(restricted.session.access_token, version)
        assert accepted.accepted_version == version
        normal = (await client.refresh(restricted.session.refresh_token)).session
        assert (await client.validate_token(normal.access_token)).valid
        assert len((await client.list_sessions(normal.access_token)).sessions) >= 1

        # Reset by SMS: every session ends, a notice goes out.
        password = next(PASSWORDS)
        notices = len(front.notices())
        await client.reset_password(
            "zhang.wei", await front.ticket(PHONE, common_pb2.PURPOSE_RESET_PASSWORD), password
        )
        await front.refused_within_a_second(normal.access_token)
        assert "密码" in (await front.notice_arrives(notices))["text"]

        # Bind an email, then reset by email.
        session = (await front.login("zhang.wei", password)).session
        bound = await client.bind_email(
            session.access_token,
            ADDRESS,
            await front.ticket(ADDRESS, common_pb2.PURPOSE_BIND_EMAIL, EMAIL),
            password=password,
        )
        assert bound.email_masked.endswith("@example.cn")
        assert ADDRESS not in bound.email_masked
        password = next(PASSWORDS)
        notices = len(front.notices("email"))
        await client.reset_password(
            ADDRESS,
            await front.ticket(ADDRESS, common_pb2.PURPOSE_RESET_PASSWORD, EMAIL),
            password,
        )
        await front.refused_within_a_second(session.access_token)
        await front.notice_arrives(notices, "email")

        # Change the password from one session, ending the other.
        mine = (await front.login("zhang.wei", password)).session
        other = (await front.login(PHONE, password)).session
        old_password, password = password, next(PASSWORDS)
        notices = len(front.notices())
        changed = await client.change_password(mine.access_token, old_password, password)
        assert changed.sessions_ended >= 1
        await front.refused_within_a_second(other.access_token)
        assert (await client.validate_token(mine.access_token)).valid
        await front.notice_arrives(notices)

        # Change the phone by the old phone, then by the email.
        notices = len(front.notices())
        await client.change_phone(
            accounts_pb2.ChangePhoneRequest(
                identifier="zhang.wei",
                new_phone=NEW_PHONE,
                new_phone_ticket=await front.ticket(NEW_PHONE, common_pb2.PURPOSE_BIND_PHONE),
                old_phone_ticket=await front.ticket(PHONE, common_pb2.PURPOSE_CHANGE_PHONE),
            )
        )
        await front.refused_within_a_second(mine.access_token)
        assert (await front.notice_arrives(notices))["to"] == PHONE
        session = (await front.login(NEW_PHONE, password)).session
        notices = len(front.notices("email"))
        await client.change_phone(
            accounts_pb2.ChangePhoneRequest(
                identifier="zhang.wei",
                new_phone=THIRD_PHONE,
                new_phone_ticket=await front.ticket(THIRD_PHONE, common_pb2.PURPOSE_BIND_PHONE),
                email_ticket=await front.ticket(ADDRESS, common_pb2.PURPOSE_CHANGE_PHONE, EMAIL),
            )
        )
        await front.refused_within_a_second(session.access_token)
        await front.notice_arrives(notices, "email")
        with pytest.raises(InvalidCredentials):
            await client.login_with_password(NEW_PHONE, password)

        # Recover the natural person: masked login name, full one by SMS, then a reset.
        session = (await front.login(THIRD_PHONE, password)).session
        sms_before = len(served.outbox("sms"))
        recovered = await client.recover_account(
            recovery_pb2.RecoverAccountRequest(
                natural_person=recovery_pb2.NaturalPersonIdentity(
                    name="张伟", id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=ID_NUMBER
                ),
                phone=THIRD_PHONE,
                phone_ticket=await front.ticket(THIRD_PHONE, common_pb2.PURPOSE_RECOVER_ACCOUNT),
            )
        )
        assert recovered.login_name_masked != "zhang.wei"
        assert recovered.login_name_masked[0] == "z"
        reminder = await front.wait_outbox("sms", sms_before + 2)  # the code, then the name
        assert "zhang.wei" in reminder["text"]
        password = next(PASSWORDS)
        await client.reset_password("zhang.wei", recovered.reset_grant, password)
        await front.refused_within_a_second(session.access_token)
        assert (await front.login("zhang.wei", password)).session.access_token

        # Recover the legal person.
        org_session = (await front.login("fuzhou-tech", org_password)).session
        recovered = await client.recover_account(
            recovery_pb2.RecoverAccountRequest(
                legal_person=recovery_pb2.LegalPersonIdentity(
                    organization_name="福州示例科技有限公司",
                    organization_type=common_pb2.ORGANIZATION_TYPE_ENTERPRISE,
                    uscc=USCC,
                    representative_type=common_pb2.REPRESENTATIVE_TYPE_LEGAL_REPRESENTATIVE,
                    representative_name="李娜",
                    representative_id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
                    representative_id_number=REP_ID,
                ),
                phone=ORG_PHONE,
                phone_ticket=await front.ticket(ORG_PHONE, common_pb2.PURPOSE_RECOVER_ACCOUNT),
            )
        )
        notices = len(front.notices())
        await client.reset_password("fuzhou-tech", recovered.reset_grant, next(PASSWORDS))
        await front.refused_within_a_second(org_session.access_token)
        await front.notice_arrives(notices)
        assert person.account_id.startswith("acc_")

    # No phone, ID number or password in the server's log.
    log = served.log_text()
    for secret in (ID_NUMBER, REP_ID, "13812345678", FIRST_PASSWORD, "zhang.wei@example.cn"):
        assert secret not in log
