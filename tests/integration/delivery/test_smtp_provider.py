"""The SMTP provider against a real local SMTP server (aiosmtpd on 127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller

from xiaohe.identity.server.delivery.providers import (
    DeliveryError,
    OutgoingMessage,
    SmtpProvider,
)
from xiaohe.identity.server.delivery.templates import (
    render_code_email_subject,
    render_code_message,
)

ADDRESS = "zhang.san@example.com"
CODE = "724615"


@dataclass
class RecordingHandler:
    """Records accepted messages; can be told to refuse recipients or data with a reply."""

    messages: list[tuple[list[str], bytes]] = field(default_factory=list)
    rcpt_reply: str = ""
    data_reply: str = ""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 Message accepted for delivery"


class PortZeroController(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (it would otherwise probe port 0)."""

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = cast(asyncio.Server, self.server).sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingHandler, int]]:
    handler = RecordingHandler()
    controller = PortZeroController(handler, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def outgoing(message_id: str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0") -> OutgoingMessage:
    return OutgoingMessage(
        message_id=message_id,
        channel="EMAIL",
        to=ADDRESS,
        purpose="RESET_PASSWORD",
        text=render_code_message("EMAIL", "RESET_PASSWORD", CODE, 300),
        subject=render_code_email_subject("RESET_PASSWORD"),
    )


def provider(port: int) -> SmtpProvider:
    return SmtpProvider("127.0.0.1", port, "noreply@xiaohe.example", timeout=5)


async def test_sends_utf8_chinese_subject_body_and_stable_message_id(
    smtp: tuple[RecordingHandler, int],
) -> None:
    handler, port = smtp
    message = outgoing()
    await provider(port).send(message)
    assert len(handler.messages) == 1
    rcpts, raw = handler.messages[0]
    assert rcpts == [ADDRESS]
    mail = message_from_bytes(raw, policy=policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"] == "【小禾企服网】重置密码验证码"
    assert mail["From"] == "noreply@xiaohe.example"
    assert mail["To"] == ADDRESS
    assert mail["Message-ID"] == f"<{message.message_id}@xiaohe.example>"
    assert mail.get_content_charset() == "utf-8"
    body = mail.get_content()
    assert CODE in body
    assert "您正在重置小禾企服网账号密码" in body
    assert "5分钟内有效" in body
    assert CODE.encode() not in raw.split(b"\r\n\r\n", 1)[0]  # not in the headers


async def test_a_resend_carries_the_same_message_id(smtp: tuple[RecordingHandler, int]) -> None:
    handler, port = smtp
    await provider(port).send(outgoing("same-id"))
    await provider(port).send(outgoing("same-id"))
    ids = {
        message_from_bytes(raw, policy=policy.default)["Message-ID"] for _, raw in handler.messages
    }
    assert ids == {"<same-id@xiaohe.example>"}


@pytest.mark.parametrize(
    ("where", "reply", "retryable"),
    [
        ("rcpt", "450 4.2.1 mailbox busy", True),
        ("rcpt", "550 5.1.1 <zhang.san@example.com> no such user", False),
        ("data", "451 4.3.0 try again later", True),
        ("data", "554 5.7.1 rejected", False),
    ],
)
async def test_4xx_is_retryable_and_5xx_permanent(
    smtp: tuple[RecordingHandler, int], where: str, reply: str, retryable: bool
) -> None:
    handler, port = smtp
    if where == "rcpt":
        handler.rcpt_reply = reply
    else:
        handler.data_reply = reply
    with pytest.raises(DeliveryError) as info:
        await provider(port).send(outgoing())
    assert info.value.retryable is retryable
    assert reply[:3] in info.value.reason
    assert ADDRESS not in str(info.value)  # the server's reply (which echoes it) is not kept
    assert CODE not in str(info.value)


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(DeliveryError) as info:
        await provider(closed_port).send(outgoing())
    assert info.value.retryable
    assert "connection error" in info.value.reason


async def test_a_header_injection_attempt_is_refused_permanently(
    smtp: tuple[RecordingHandler, int],
) -> None:
    handler, port = smtp
    bad = OutgoingMessage(
        message_id="inj",
        channel="EMAIL",
        to="victim@example.com\r\nBcc: attacker@example.com",
        purpose="LOGIN",
        text="x",
        subject="s",
    )
    with pytest.raises(DeliveryError) as info:
        await provider(port).send(bad)
    assert info.value.retryable is False
    assert "attacker" not in str(info.value)
    assert handler.messages == []


def test_credentials_without_starttls_are_refused() -> None:
    """X2: a provider that would log in over plaintext cannot be built."""
    with pytest.raises(ValueError, match="STARTTLS"):
        SmtpProvider("127.0.0.1", 25, "noreply@xiaohe.example", "mailer", "smtp-secret")


async def test_a_server_without_starttls_never_sees_the_credentials(
    smtp: tuple[RecordingHandler, int],
) -> None:
    """X2: STARTTLS comes first; a server that does not offer it gets no AUTH and no mail."""
    handler, port = smtp
    mailer = SmtpProvider(
        "127.0.0.1", port, "noreply@xiaohe.example", "mailer", "smtp-secret", starttls=True
    )
    with pytest.raises(DeliveryError) as info:
        await mailer.send(outgoing())
    assert not info.value.retryable
    assert "smtp-secret" not in info.value.reason
    assert handler.messages == []
