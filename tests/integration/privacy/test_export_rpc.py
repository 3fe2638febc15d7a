"""PrivacyService.ExportMyData and StreamMyDocument over real gRPC (issue 14, SECURITY I4).

Two accounts are given every kind of data the service holds (profile, identifiers, phone
and email, a document and a verified real-name submission, consents, sessions, audit
records, a disclosure to a business system, messages); each one's export holds a marker
of every kind, validates against the published schema (docs/export-schema.json), and
holds nothing of the other account.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from tests.document_samples import png_sample
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import PASSWORD, code_ticket, login, register_ticket, stubs
from tests.integration.realname.test_realname_rpc import rn, ts, upload
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.flows.export import EXPORT_ACTION
from xiaohe.identity.v1 import (
    accounts_pb2,
    common_pb2,
    directory_pb2,
    directory_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    realname_pb2,
)

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "docs" / "export-schema.json"


@dataclass
class Person:
    """One account's marker values, and what the test created for it."""

    login_name: str
    phone: str
    email: str
    name: str
    id_number: str
    purpose: str
    account_id: str = ""
    access_token: str = ""
    session_id: str = ""
    document_id: str = ""
    submission_id: str = ""
    business_client: str = ""
    request_id: str = ""

    @property
    def request_detail(self) -> str:
        """The text of this person's rights request."""
        return f"请删除旧的发票抬头（{self.login_name}）"

    def markers(self) -> list[str]:
        """Values that belong to this account alone."""
        return [
            self.account_id,
            self.login_name,
            self.phone,
            self.email,
            self.name,
            self.id_number,
            self.session_id,
            self.document_id,
            self.submission_id,
            self.business_client,
            self.purpose,
            self.request_id,
            self.request_detail,
        ]


def zhang() -> Person:
    return Person(
        "zhang.export",
        "+8613812340001",
        "zhang.export@example.com",
        "张导出",
        "11010519491231002X",
        "order_zhang",
    )


def li() -> Person:
    return Person(
        "li.export",
        "+8613912340002",
        "li.export@example.com",
        "李导出",
        "110101199003071233",
        "order_li",
    )


def privacy(h: Harness) -> privacy_pb2_grpc.PrivacyServiceAsyncStub:
    return privacy_pb2_grpc.PrivacyServiceStub(h.channel)  # type: ignore[return-value]


def bearer(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    return (*h.metadata, ("authorization", f"Bearer {token}"))


async def failure(call: object) -> Details:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return details_of(caught.value)


async def give_everything(h: Harness, p: Person) -> None:
    """Register `p` and give the account one of every kind of data."""
    s = stubs(h)
    registered = await s.accounts.Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=p.login_name,
            password=PASSWORD,
            phone=p.phone,
            phone_ticket=await register_ticket(h, p.phone),
            accepted_policy_version=1,
            natural_person=accounts_pb2.NaturalPersonProfile(name=p.name),
        ),
        metadata=h.metadata,
    )
    p.account_id = registered.account_id
    session = await login(h, p.login_name)
    p.access_token, p.session_id = session.access_token, session.session_id
    email_ticket = await code_ticket(
        h, p.email, common_pb2.PURPOSE_BIND_EMAIL, common_pb2.CHANNEL_EMAIL
    )
    await s.accounts.BindEmail(
        accounts_pb2.BindEmailRequest(email=p.email, email_ticket=email_ticket, password=PASSWORD),
        metadata=bearer(h, p.access_token),
    )
    document = await upload(h, p.access_token, png_sample())  # with the separate consent
    p.document_id = document.document_id
    submitted = await rn(h).SubmitNaturalPerson(
        realname_pb2.SubmitNaturalPersonRequest(
            name=p.name,
            id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
            id_number=p.id_number,
            valid_from=ts(h.clock.now() - 86400 * 365),
            address="青海省西宁市",
            document_ids=[p.document_id],
        ),
        metadata=bearer(h, p.access_token),
    )
    assert submitted.state == realname_pb2.REAL_NAME_STATE_VERIFIED
    p.submission_id = submitted.submission_id
    business = await h.client_metadata("directory", "field:login_name", f"purpose:{p.purpose}")
    p.business_client = dict(business)["x-client-id"]
    directory: directory_pb2_grpc.DirectoryServiceAsyncStub = (
        directory_pb2_grpc.DirectoryServiceStub(  # type: ignore[assignment]
            h.channel
        )
    )
    await directory.GetIdentity(
        directory_pb2.GetIdentityRequest(
            account_id=p.account_id,
            fields=[directory_pb2.IDENTITY_FIELD_LOGIN_NAME],
            purpose=p.purpose,
        ),
        metadata=business,
    )
    filed = await privacy(h).FileRequest(
        privacy_pb2.FileRequestRequest(
            kind=privacy_pb2.RIGHTS_REQUEST_KIND_DELETION, detail=p.request_detail
        ),
        metadata=bearer(h, p.access_token),
    )
    p.request_id = filed.request.request_id


async def export_ticket(
    h: Harness, destination: str, channel: common_pb2.Channel.ValueType = common_pb2.CHANNEL_SMS
) -> str:
    """An EXPORT_DATA ticket through IssueCode (past the resend cooldown of any earlier code
    to the destination), the dev outbox and VerifyCode."""
    h.clock.advance(61)
    return await code_ticket(h, destination, common_pb2.PURPOSE_EXPORT_DATA, channel)


async def export(h: Harness, token: str, ticket: str) -> tuple[dict[str, Any], list[str]]:
    """The joined, parsed export and the `schema` of each message."""
    call = privacy(h).ExportMyData(
        privacy_pb2.ExportMyDataRequest(ticket=ticket), metadata=bearer(h, token)
    )
    chunks, schemas = [], []
    async for message in call:
        chunks.append(message.chunk)
        schemas.append(message.schema)
    return json.loads(b"".join(chunks).decode("utf-8")), schemas


def validate(document: dict[str, Any]) -> None:
    """The document follows the published schema (formats checked too)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


async def test_an_export_holds_every_kind_of_data_and_nothing_of_another_account(
    h: Harness,
) -> None:
    """I4 (issue 14 acceptance): with two accounts holding every kind of data, each export
    has a marker from every section, validates against docs/export-schema.json, and holds
    none of the other account's markers; it is audited."""
    zhang_, li_ = zhang(), li()
    await give_everything(h, zhang_)
    await give_everything(h, li_)
    await h.drain_outbox()

    documents = {}
    for p in (zhang_, li_):
        ticket = await export_ticket(h, p.phone)
        document, schemas = await export(h, p.access_token, ticket)
        assert schemas[0] == "xiaohe-export/1"
        validate(document)
        documents[p.login_name] = document

    for p, other in ((zhang_, li_), (li_, zhang_)):
        d = documents[p.login_name]
        assert d["account_id"] == p.account_id
        assert d["profile"]["login_name"] == p.login_name
        assert d["profile"]["name"] == p.name
        assert d["profile"]["totp_enrolled"] is False
        identifiers = {i["kind"]: i["value"] for i in d["identifiers"]}
        assert identifiers["login_name"] == p.login_name
        assert identifiers["phone"] == p.phone
        assert identifiers["email"] == p.email
        assert {c["channel"]: c["value"] for c in d["channels"]} == {
            "phone": p.phone,
            "email": p.email,
        }
        (submission,) = d["real_name"]["submissions"]
        assert submission["submission_id"] == p.submission_id
        assert submission["state"] == "verified"
        assert p.id_number in submission["details"].values()
        (doc,) = d["real_name"]["documents"]
        assert doc["document_id"] == p.document_id
        assert doc["download"].endswith("/StreamMyDocument")
        assert d["real_name"]["level"] == 1
        consents = {(c["purpose"], c["action"]) for c in d["consents"]}
        assert consents == {("privacy_policy", "grant"), ("identity_documents", "grant")}
        assert p.session_id in {s["session_id"] for s in d["sessions"]}
        actions = {(e["action"], e["target"]) for e in d["security_events"]}
        assert ("document.upload", p.document_id) in actions
        assert ("privacy.consent.withdraw", p.account_id) not in actions
        (disclosure,) = d["disclosures"]
        assert (disclosure["client_id"], disclosure["purpose"]) == (p.business_client, p.purpose)
        purposes = {m["purpose"] for m in d["messages"]}
        assert "EXPORT_DATA" in purposes
        assert {m["channel"] for m in d["messages"]} == {"SMS", "EMAIL"}
        (request,) = d["rights_requests"]
        assert (request["request_id"], request["kind"], request["state"]) == (
            p.request_id,
            "deletion",
            "open",
        )
        assert request["detail"] == p.request_detail
        assert d["review_cases"] == []  # none is about this account (see the next test)
        text = json.dumps(d, ensure_ascii=False)
        for marker in p.markers():
            assert marker in text
        for marker in other.markers():
            assert marker not in text, marker
        # Secrets are not data about the person.
        assert PASSWORD not in text
        assert "$argon2" not in text

    records = await h.container.audit.query(action=EXPORT_ACTION)
    assert [(r.target, r.outcome) for r in records] == [
        (zhang_.account_id, "ok"),
        (li_.account_id, "ok"),
    ]


async def test_an_export_holds_the_review_cases_about_the_account(
    harness_factory: HarnessFactory,
) -> None:
    """A real-name submission that goes to manual review opens a case about the account:
    the export shows it with what was submitted, never a reviewer's identity or note."""
    h = await harness_factory(real_name_review=True)
    p = zhang()
    s = stubs(h)
    registered = await s.accounts.Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=p.login_name,
            password=PASSWORD,
            phone=p.phone,
            phone_ticket=await register_ticket(h, p.phone),
            accepted_policy_version=1,
        ),
        metadata=h.metadata,
    )
    session = await login(h, p.login_name)
    document = await upload(h, session.access_token, png_sample())
    submitted = await rn(h).SubmitNaturalPerson(
        realname_pb2.SubmitNaturalPersonRequest(
            name=p.name,
            id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
            id_number=p.id_number,
            valid_from=ts(h.clock.now() - 86400 * 365),
            address="青海省西宁市",
            document_ids=[document.document_id],
        ),
        metadata=bearer(h, session.access_token),
    )
    assert submitted.state == realname_pb2.REAL_NAME_STATE_IN_REVIEW
    (case,) = await h.container.review_cases.about(registered.account_id)

    exported, _ = await export(h, session.access_token, await export_ticket(h, p.phone))
    validate(exported)
    (shown,) = exported["review_cases"]
    assert (shown["case_id"], shown["kind"], shown["state"]) == (case.case_id, "real_name", "OPEN")
    assert p.id_number in shown["fields"].values()
    assert shown["document_ids"] == [document.document_id]
    assert shown["decided_at"] is None


async def test_export_needs_a_fresh_ticket_of_the_accounts_own_channel(h: Harness) -> None:
    """I4: no ticket is INVALID_ARGUMENT on `ticket`; a ticket of another purpose, or for
    another account's phone, is refused on `ticket`; an email ticket of the account's own
    email works; a ticket works once."""
    zhang_, li_ = zhang(), li()
    await give_everything(h, zhang_)
    await give_everything(h, li_)

    missing = await failure(export(h, zhang_.access_token, ""))
    assert missing.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ticket" in missing.violations

    others = await export_ticket(h, li_.phone)
    refused = await failure(export(h, zhang_.access_token, others))
    assert "ticket" in refused.violations
    assert refused.code != grpc.StatusCode.INTERNAL
    # The refusal did not use the other person's ticket up: it still works for them.
    document, _ = await export(h, li_.access_token, others)
    assert document["account_id"] == li_.account_id

    h.clock.advance(61)
    login_ticket = await code_ticket(h, zhang_.phone, common_pb2.PURPOSE_LOGIN)
    wrong_purpose = await failure(export(h, zhang_.access_token, login_ticket))
    assert "ticket" in wrong_purpose.violations

    by_email = await export_ticket(h, zhang_.email, common_pb2.CHANNEL_EMAIL)
    document, _ = await export(h, zhang_.access_token, by_email)
    assert document["account_id"] == zhang_.account_id
    again = await failure(export(h, zhang_.access_token, by_email))
    assert "ticket" in again.violations

    no_session = await failure(
        privacy(h)
        .ExportMyData(privacy_pb2.ExportMyDataRequest(ticket=by_email), metadata=h.metadata)
        .read()  # type: ignore[attr-defined]
    )
    assert no_session.code == grpc.StatusCode.UNAUTHENTICATED


async def test_exports_are_rate_limited_per_account(harness_factory: HarnessFactory) -> None:
    """Issue 14: past `export_per_account_day` exports, RESOURCE_EXHAUSTED with a retry time;
    a refused ticket does not spend the budget; the refusal is audited."""
    h = await harness_factory(export_per_account_day=1)
    zhang_ = zhang()
    await give_everything(h, zhang_)
    bad = await failure(export(h, zhang_.access_token, "vt1." + "0" * 32 + "." + "A" * 43))
    assert "ticket" in bad.violations
    await export(h, zhang_.access_token, await export_ticket(h, zhang_.phone))
    limited = await failure(export(h, zhang_.access_token, await export_ticket(h, zhang_.phone)))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.retry_after is not None
    assert limited.retry_after > 0
    outcomes = [r.outcome for r in await h.container.audit.query(action=EXPORT_ACTION)]
    assert outcomes[-1] != "ok"
    assert outcomes.count("ok") == 1


async def test_an_export_that_fails_while_being_read_costs_no_budget(
    harness_factory: HarnessFactory,
) -> None:
    """Review finding: when reading the data fails after the ticket was accepted, the day's
    budget is given back (the error is UNAVAILABLE, not INTERNAL), so the next export works."""
    h = await harness_factory(export_per_account_day=1)
    zhang_ = zhang()
    await give_everything(h, zhang_)
    flow = h.container.export
    read = flow._document

    async def store_down(account_id: str, data: Any) -> dict[str, Any]:
        raise Unavailable()

    flow._document = store_down  # type: ignore[method-assign]
    down = await failure(export(h, zhang_.access_token, await export_ticket(h, zhang_.phone)))
    assert down.code == grpc.StatusCode.UNAVAILABLE
    flow._document = read  # type: ignore[method-assign]
    document, _ = await export(h, zhang_.access_token, await export_ticket(h, zhang_.phone))
    assert document["account_id"] == zhang_.account_id


async def test_a_recycled_phone_proves_nothing(h: Harness) -> None:
    """Review question (H3): once the account's phone is reported recycled, an EXPORT_DATA
    ticket of that number, even one verified before the report, is refused on `ticket`;
    the account's email still works."""
    zhang_ = zhang()
    await give_everything(h, zhang_)
    by_phone = await export_ticket(h, zhang_.phone)  # verified just before the report
    async with h.container.database.begin():
        assert await h.container.accounts.mark_phone_stale(
            zhang_.account_id, zhang_.phone, bound_before=h.clock.now() + 1
        )
    refused = await failure(export(h, zhang_.access_token, by_phone))
    assert "ticket" in refused.violations
    by_email = await export_ticket(h, zhang_.email, common_pb2.CHANNEL_EMAIL)
    document, _ = await export(h, zhang_.access_token, by_email)
    assert document["account_id"] == zhang_.account_id


async def test_document_downloads_are_limited_per_account(h: Harness) -> None:
    """Review finding: downloads of one's documents draw on an hourly budget per account,
    unknown ids included, so a stolen access token cannot pull every scan at will."""
    zhang_ = zhang()
    await give_everything(h, zhang_)
    h.container.export._downloads_per_hour = 2

    def download(document_id: str) -> Any:
        return privacy(h).StreamMyDocument(
            privacy_pb2.StreamMyDocumentRequest(document_id=document_id),
            metadata=bearer(h, zhang_.access_token),
        )

    first = [m async for m in download(zhang_.document_id)]
    assert first[0].content_type == "image/png"
    unknown = await failure(download("doc_unknown").read())
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    limited = await failure(download(zhang_.document_id).read())
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.retry_after is not None


async def test_the_owner_downloads_a_document_the_export_names(h: Harness) -> None:
    """D1, I4: StreamMyDocument gives the owner the document's bytes and type, and audits the
    read; another account's document (or an unknown id) is NOT_FOUND alike; an empty id is
    INVALID_ARGUMENT."""
    zhang_, li_ = zhang(), li()
    await give_everything(h, zhang_)
    await give_everything(h, li_)

    call = privacy(h).StreamMyDocument(
        privacy_pb2.StreamMyDocumentRequest(document_id=zhang_.document_id),
        metadata=bearer(h, zhang_.access_token),
    )
    messages = [m async for m in call]
    content = b"".join(m.chunk for m in messages)
    assert messages[0].content_type == "image/png"
    assert messages[0].file_name == "scan.png"
    assert content.startswith(b"\x89PNG")
    stored = await h.container.documents.read(
        zhang_.document_id, reader=zhang_.account_id, why="test"
    )
    assert content == stored
    reads = await h.container.audit.query(action="document.read")
    assert (zhang_.document_id, "owner", zhang_.account_id) in {
        (r.target, r.outcome, r.actor_account) for r in reads
    }

    for document_id in (li_.document_id, "doc_" + "0" * 24):
        theirs = privacy(h).StreamMyDocument(
            privacy_pb2.StreamMyDocumentRequest(document_id=document_id),
            metadata=bearer(h, zhang_.access_token),
        )
        refused = await failure(theirs.read())  # type: ignore[attr-defined]
        assert refused.code == grpc.StatusCode.NOT_FOUND
    empty = privacy(h).StreamMyDocument(
        privacy_pb2.StreamMyDocumentRequest(), metadata=bearer(h, zhang_.access_token)
    )
    blank = await failure(empty.read())  # type: ignore[attr-defined]
    assert blank.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "document_id" in blank.violations
