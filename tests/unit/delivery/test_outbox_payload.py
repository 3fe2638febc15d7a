"""The sealed outbox payload: what it carries, and rows written before it carried more."""

from __future__ import annotations

import json

import pytest

from xiaohe.identity.server.delivery.outbox import Payload


def test_template_and_variables_survive_the_round_trip_in_order() -> None:
    payload = Payload(
        to="+8613812345678",
        text="【小禾企服网】…",
        template="login_name_reminder",
        params={"at": "2026-12-02 10:00", "login_name": "zhang.san"},
    )
    back = Payload.from_bytes(payload.to_bytes())
    assert back == payload
    assert list(back.params) == ["at", "login_name"]


def test_a_payload_sealed_before_templates_existed_still_opens() -> None:
    legacy = json.dumps({"to": "a@example.com", "text": "t", "subject": "s"}).encode()
    back = Payload.from_bytes(legacy)
    assert (back.template, dict(back.params)) == ("", {})


@pytest.mark.parametrize(
    "doc",
    [
        {"to": "x", "text": "t", "params": {"code": 123456}},
        {"to": "x", "text": "t", "params": ["code"]},
        {"to": "x", "text": "t", "template": 7},
        {"to": 1, "text": "t"},
        ["not", "an", "object"],
    ],
)
def test_malformed_payloads_are_refused(doc: object) -> None:
    with pytest.raises(ValueError, match="malformed"):
        Payload.from_bytes(json.dumps(doc).encode())


def test_the_payload_repr_shows_no_destination_text_or_variables() -> None:
    shown = repr(Payload(to="+8613812345678", text="code 604219", params={"code": "604219"}))
    assert "13812345678" not in shown
    assert "604219" not in shown
