"""Real-name verification and manual review against `xiaohe-identity serve` (issue 12).

A natural person uploads a JPEG and submits; the rule-only verifier with review on
answers IN_REVIEW. A reviewer (an operator account holding the role `review`, granted
by the CLI) signs in with password + TOTP through a console client granted `review`,
lists the case, streams the document and approves; the person's next refreshed token
carries the new real-name level. The same for a legal person, whose case is rejected
with a reason. A phone change by review ends as a changed phone, notices sent and
sessions ended. Nothing of a document is in plaintext in the data directory, every
document read is audited, and the audit chain verifies.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyotp
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.document_samples import EXIF_SECRET, MARKER, jpeg_sample, png_sample
from tests.e2e.conftest import CLI, ServedProcess, start_serve
from tests.rpc_errors import details_of
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
    realname_pb2,
    realname_pb2_grpc,
    review_pb2,
    review_pb2_grpc,
)

PASSWORD = "Qingshan-Lvshui-2026"
REVIEWER_PASSWORD = "Yanjin-Shiqiu-Cha-2026!"
PERSON_PHONE = "+8613812340001"
COMPANY_PHONE = "+8613812340002"
REVIEWER_PHONE = "+8613812340003"
MOVER_PHONE = "+8613812340004"
MOVER_NEW_PHONE = "+8613812340005"
ID_NUMBER = "11010519491231002X"
REJECTION_REASON = "营业执照扫描件不清晰"
USCC = "91350100M000100Y43"


def timestamp(year: int) -> Timestamp:
    out = Timestamp()
    out.FromSeconds(int(time.mktime((year, 1, 1, 0, 0, 0, 0, 0, 0))))
    return out


class Stubs:
    """Stubs and helpers over one served process."""

    def __init__(self, served: ServedProcess, channel: grpc.Channel) -> None:
        self.served = served
        self.md = served.metadata
        self.codes = codes_pb2_grpc.CodeServiceStub(channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.accounts = accounts_pb2_grpc.AccountServiceStub(channel)
        self.realname = realname_pb2_grpc.RealNameServiceStub(channel)
        self.review = review_pb2_grpc.ReviewServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)

    def user(self, token: str) -> tuple[tuple[str, str], ...]:
        return (*self.md, ("authorization", f"Bearer {token}"))

    def sms_lines(self, phone: str) -> list[dict[str, str]]:
        return [line for line in self.served.outbox() if line["to"] == phone]

    def ticket(self, phone: str, purpose: int) -> str:
        before = len(self.served.outbox())
        self.codes.IssueCode(
            codes_pb2.IssueCodeRequest(
                channel=common_pb2.CHANNEL_SMS, destination=phone, purpose=purpose
            ),
            metadata=self.md,
            timeout=10,
        )
        deadline = time.monotonic() + 10
        while len(self.served.outbox()) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        line = self.sms_lines(phone)[-1]
        code = re.search(r"\d{6}", line["text"])
        assert code is not None
        return self.codes.VerifyCode(
            codes_pb2.VerifyCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=phone,
                purpose=purpose,
                code=code.group(0),
            ),
            metadata=self.md,
            timeout=10,
        ).ticket

    def register(
        self,
        login_name: str,
        phone: str,
        *,
        legal: bool = False,
        password: str = PASSWORD,
    ) -> str:
        request = accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_LEGAL_PERSON
            if legal
            else common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=login_name,
            password=password,
            phone=phone,
            phone_ticket=self.ticket(phone, common_pb2.PURPOSE_REGISTER),
            accepted_policy_version=1,
        )
        return self.accounts.Register(request, metadata=self.md, timeout=10).account_id

    def login(self, login_name: str, password: str = PASSWORD) -> auth_pb2.LoginResponse:
        return self.auth.Login(
            auth_pb2.LoginRequest(
                password=auth_pb2.PasswordCredential(identifier=login_name, password=password)
            ),
            metadata=self.md,
            timeout=10,
        )

    def upload(
        self, token: str, data: bytes, kind: int, file_name: str
    ) -> realname_pb2.UploadDocumentResponse:
        header = realname_pb2.DocumentHeader(
            kind=kind, file_name=file_name, declared_size=len(data), separate_consent=True
        )
        parts = [realname_pb2.UploadDocumentRequest(header=header)] + [
            realname_pb2.UploadDocumentRequest(chunk=data[i : i + 1000])
            for i in range(0, len(data), 1000)
        ]
        return self.realname.UploadDocument(iter(parts), metadata=self.user(token), timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedProcess]:
    process = start_serve(tmp_path / "var", XIAOHE_IDENTITY_REAL_NAME_REVIEW="true")
    yield process
    process.stop()


@pytest.fixture
def stubs(served: ServedProcess) -> Iterator[Stubs]:
    with grpc.insecure_channel(served.target) as channel:
        yield Stubs(served, channel)


def cli(served: ServedProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the served data directory."""
    env = {"XIAOHE_IDENTITY_DATA_DIR": str(served.data_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


class Reviewer:
    """An operator account with the role `review`, signed in with password + TOTP, calling
    through a console client that holds only the grant `review`."""

    def __init__(self, stubs: Stubs, login_name: str, phone: str) -> None:
        self.stubs = stubs
        self.account_id = stubs.register(login_name, phone, password=REVIEWER_PASSWORD)
        console = cli(stubs.served, "clients", "create", "review-console", "--grant", "review")
        assert console.returncode == 0, console.stderr
        created = json.loads(console.stdout)
        self.console = (
            ("x-client-id", created["client_id"]),
            ("x-client-secret", created["client_secret"]),
        )
        # Enrol TOTP with a password-only session, then sign in again with both factors.
        first = stubs.login(login_name, REVIEWER_PASSWORD).session.access_token
        self.password_only_token = first
        enrolled = stubs.accounts.EnrollTotp(
            accounts_pb2.EnrollTotpRequest(password=REVIEWER_PASSWORD),
            metadata=stubs.user(first),
            timeout=10,
        )
        assert enrolled.qr_png.startswith(b"\x89PNG")
        self.totp = pyotp.parse_uri(enrolled.otpauth_uri)
        assert isinstance(self.totp, pyotp.TOTP)
        stubs.accounts.ConfirmTotp(
            accounts_pb2.ConfirmTotpRequest(code=self.totp.now()),
            metadata=stubs.user(first),
            timeout=10,
        )
        # The role goes only to an account with a confirmed second factor (P5).
        granted = cli(stubs.served, "operators", "grant", login_name, "review")
        assert granted.returncode == 0, granted.stderr
        answer = stubs.login(login_name, REVIEWER_PASSWORD)
        assert answer.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
        assert not answer.session.access_token
        # The next time step: the confirmation used the current one, and a step is used once.
        done = stubs.auth.CompleteMfa(
            auth_pb2.CompleteMfaRequest(
                mfa_ticket=answer.mfa_ticket, totp_code=self.totp.at(time.time() + 30)
            ),
            metadata=stubs.md,
            timeout=10,
        )
        self.token = done.session.access_token
        claims = stubs.auth.ValidateToken(
            auth_pb2.ValidateTokenRequest(access_token=self.token), metadata=stubs.md, timeout=10
        )
        assert set(claims.auth_methods) >= {"pwd", "otp"}

    def md(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (*self.console, ("authorization", f"Bearer {token or self.token}"))

    def open_cases(self, kind: int) -> list[review_pb2.CaseSummary]:
        listed = self.stubs.review.ListCases(
            review_pb2.ListCasesRequest(kind=kind, state=review_pb2.CASE_STATE_OPEN),
            metadata=self.md(),
            timeout=10,
        )
        return list(listed.cases)

    def stream(self, case_id: str, document_id: str) -> tuple[str, bytes]:
        parts = list(
            self.stubs.review.StreamDocument(
                review_pb2.StreamDocumentRequest(case_id=case_id, document_id=document_id),
                metadata=self.md(),
                timeout=10,
            )
        )
        return parts[0].content_type, b"".join(p.chunk for p in parts)

    def decide(self, case_id: str, decision: int, reason: str) -> review_pb2.DecideCaseResponse:
        return self.stubs.review.DecideCase(
            review_pb2.DecideCaseRequest(case_id=case_id, decision=decision, reason=reason),
            metadata=self.md(),
            timeout=10,
        )


def submit_company(stubs: Stubs, company: str) -> realname_pb2.SubmitLegalPersonResponse:
    """A legal person's submission with its three kinds of documents."""
    licence = stubs.upload(
        company, png_sample(), realname_pb2.DOCUMENT_KIND_BUSINESS_LICENCE, "licence.png"
    )
    screenshot = stubs.upload(
        company, png_sample(), realname_pb2.DOCUMENT_KIND_PUBLICITY_SCREENSHOT, "gsxt.png"
    )
    representative = stubs.upload(
        company, jpeg_sample(), realname_pb2.DOCUMENT_KIND_REPRESENTATIVE_ID_SCAN, "faren.jpg"
    )
    return stubs.realname.SubmitLegalPerson(
        realname_pb2.SubmitLegalPersonRequest(
            organization_name="福州小禾企业服务有限公司",
            organization_type=common_pb2.ORGANIZATION_TYPE_ENTERPRISE,
            uscc=USCC,
            representative_type=common_pb2.REPRESENTATIVE_TYPE_LEGAL_REPRESENTATIVE,
            representative_name="林小禾",
            representative_id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
            representative_id_number=ID_NUMBER,
            address="福建省福州市鼓楼区",
            licence_document_ids=[licence.document_id],
            publicity_screenshot_document_ids=[screenshot.document_id],
            representative_id_document_ids=[representative.document_id],
        ),
        metadata=stubs.user(company),
        timeout=10,
    )


def refreshed_level(stubs: Stubs, login: auth_pb2.LoginResponse) -> int:
    """The real-name level a token carries after the session's next refresh."""
    refreshed = stubs.auth.Refresh(
        auth_pb2.RefreshRequest(refresh_token=login.session.refresh_token),
        metadata=stubs.md,
        timeout=10,
    )
    claims = stubs.auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=refreshed.session.access_token),
        metadata=stubs.md,
        timeout=10,
    )
    assert claims.valid
    return claims.real_name_level


def test_real_name_by_review_for_a_natural_and_a_legal_person(stubs: Stubs) -> None:
    """D1, D2: upload, submit, IN_REVIEW; a TOTP-signed reviewer lists, streams and decides;
    the approved person's refreshed token carries the level; the rejected company sees why."""
    stubs.register("lin.xiaohe", PERSON_PHONE)
    person = stubs.login("lin.xiaohe")
    token = person.session.access_token
    scan = jpeg_sample()
    uploaded = stubs.upload(token, scan, realname_pb2.DOCUMENT_KIND_ID_SCAN, "id-front.jpg")
    assert uploaded.content_type == "image/jpeg"
    submitted = stubs.realname.SubmitNaturalPerson(
        realname_pb2.SubmitNaturalPersonRequest(
            name="林小禾",
            id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
            id_number=ID_NUMBER,
            valid_from=timestamp(2020),
            valid_until=timestamp(2040),
            address="福建省福州市鼓楼区",
            document_ids=[uploaded.document_id],
        ),
        metadata=stubs.user(token),
        timeout=10,
    )
    assert submitted.state == realname_pb2.REAL_NAME_STATE_IN_REVIEW

    stubs.register("qiye.xiaohe", COMPANY_PHONE, legal=True)
    company_login = stubs.login("qiye.xiaohe")
    company = company_login.session.access_token
    legal = submit_company(stubs, company)
    assert legal.state == realname_pb2.REAL_NAME_STATE_IN_REVIEW

    reviewer = Reviewer(stubs, "wang.kaishen", REVIEWER_PHONE)
    cases = reviewer.open_cases(review_pb2.CASE_KIND_REAL_NAME)
    assert [c.subject_type for c in cases] == [
        common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
        common_pb2.SUBJECT_TYPE_LEGAL_PERSON,
    ], "oldest first"
    person_case, company_case = cases
    got = stubs.review.GetCase(
        review_pb2.GetCaseRequest(case_id=person_case.case_id),
        metadata=reviewer.md(),
        timeout=10,
    ).case
    fields = {f.name: f for f in got.fields}
    assert fields["id_number"].masked
    assert ID_NUMBER not in fields["id_number"].value
    (document,) = got.documents
    content_type, streamed = reviewer.stream(person_case.case_id, document.document_id)
    assert content_type == "image/jpeg"
    assert streamed.startswith(b"\xff\xd8")
    assert EXIF_SECRET in scan
    assert EXIF_SECRET not in streamed, "EXIF stripped"
    approved = reviewer.decide(person_case.case_id, review_pb2.DECISION_APPROVE, "证件与信息一致")
    assert approved.state == review_pb2.CASE_STATE_APPROVED
    assert refreshed_level(stubs, person) == 2

    company_docs = stubs.review.GetCase(
        review_pb2.GetCaseRequest(case_id=company_case.case_id),
        metadata=reviewer.md(),
        timeout=10,
    ).case.documents
    pngs = [doc.document_id for doc in company_docs if doc.content_type == "image/png"]
    streamed_pngs = [reviewer.stream(company_case.case_id, doc)[1] for doc in pngs]
    assert len(streamed_pngs) == 2
    for body in streamed_pngs:
        assert MARKER in body, "the reviewer sees the pixels as uploaded"
    rejected = reviewer.decide(company_case.case_id, review_pb2.DECISION_REJECT, REJECTION_REASON)
    assert rejected.state == review_pb2.CASE_STATE_REJECTED
    status = stubs.realname.GetRealNameStatus(
        realname_pb2.GetRealNameStatusRequest(), metadata=stubs.user(company), timeout=10
    )
    assert status.state == realname_pb2.REAL_NAME_STATE_REJECTED
    assert status.reason == REJECTION_REASON
    # A clearer scan the second time: approved, and the company's next token carries it.
    again = submit_company(stubs, company)
    assert again.state == realname_pb2.REAL_NAME_STATE_IN_REVIEW
    (second,) = reviewer.open_cases(review_pb2.CASE_KIND_REAL_NAME)
    assert second.subject_type == common_pb2.SUBJECT_TYPE_LEGAL_PERSON
    reviewer.decide(second.case_id, review_pb2.DECISION_APPROVE, "执照清晰，公示信息一致")
    assert refreshed_level(stubs, company_login) == 2

    # Refusals: no TOTP in the token, no grant on the client, a case about oneself.
    with pytest.raises(grpc.RpcError) as no_otp:
        reviewer.stubs.review.ListCases(
            review_pb2.ListCasesRequest(),
            metadata=reviewer.md(reviewer.password_only_token),
            timeout=10,
        )
    assert no_otp.value.code() == grpc.StatusCode.PERMISSION_DENIED
    no_grant = cli(stubs.served, "clients", "create", "front-end", "--grant", "accounts")
    front_end = json.loads(no_grant.stdout)
    with pytest.raises(grpc.RpcError) as ungranted:
        stubs.review.ListCases(
            review_pb2.ListCasesRequest(),
            metadata=(
                ("x-client-id", front_end["client_id"]),
                ("x-client-secret", front_end["client_secret"]),
                ("authorization", f"Bearer {reviewer.token}"),
            ),
            timeout=10,
        )
    assert ungranted.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own = stubs.upload(
        reviewer.token,
        jpeg_sample(),
        realname_pb2.DOCUMENT_KIND_ID_SCAN,
        "mine.jpg",
    )
    stubs.realname.SubmitNaturalPerson(
        realname_pb2.SubmitNaturalPersonRequest(
            name="沈核",
            id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
            id_number="350102198506150028",
            valid_from=timestamp(2020),
            valid_until=timestamp(2040),
            address="福建省福州市台江区",
            document_ids=[own.document_id],
        ),
        metadata=stubs.user(reviewer.token),
        timeout=10,
    )
    (own_case,) = reviewer.open_cases(review_pb2.CASE_KIND_REAL_NAME)
    with pytest.raises(grpc.RpcError) as self_review:
        reviewer.decide(own_case.case_id, review_pb2.DECISION_APPROVE, "本人")
    assert self_review.value.code() == grpc.StatusCode.PERMISSION_DENIED

    assert_no_plaintext_and_reads_audited(stubs, {document.document_id, *pngs})


def test_phone_change_by_review(stubs: Stubs) -> None:
    """H1, D2: ChangePhone with manual review opens a case; approval changes the phone,
    notifies the old phone and ends the account's sessions."""
    stubs.register("yi.ban", MOVER_PHONE)
    session = stubs.login("yi.ban")
    scan = stubs.upload(
        session.session.access_token, jpeg_sample(), realname_pb2.DOCUMENT_KIND_ID_SCAN, "id.jpg"
    )
    opened = stubs.accounts.ChangePhone(
        accounts_pb2.ChangePhoneRequest(
            identifier="yi.ban",
            new_phone=MOVER_NEW_PHONE,
            new_phone_ticket=stubs.ticket(MOVER_NEW_PHONE, common_pb2.PURPOSE_BIND_PHONE),
            manual_review=common_pb2.ManualReviewProof(document_ids=[scan.document_id]),
        ),
        metadata=stubs.user(session.session.access_token),  # its own scan: signed in
        timeout=10,
    )
    assert opened.review_case_id
    assert not opened.phone_masked, "nothing changes before a decision"

    reviewer = Reviewer(stubs, "zhao.kaishen", REVIEWER_PHONE)
    (case,) = reviewer.open_cases(review_pb2.CASE_KIND_PHONE_CHANGE)
    assert case.case_id == opened.review_case_id
    notices_before = len(stubs.sms_lines(MOVER_PHONE))
    reviewer.decide(case.case_id, review_pb2.DECISION_APPROVE, "证件本人手持照片一致")

    with pytest.raises(grpc.RpcError) as ended:
        stubs.auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=session.session.refresh_token),
            metadata=stubs.md,
            timeout=10,
        )
    assert details_of(ended.value).reason == "TOKEN_INVALID"
    account = stubs.accounts.GetAccount(
        accounts_pb2.GetAccountRequest(),
        metadata=stubs.user(stubs.login("yi.ban").session.access_token),
        timeout=10,
    ).account
    assert account.phone_masked.endswith(MOVER_NEW_PHONE[-4:])
    deadline = time.monotonic() + 10
    while len(stubs.sms_lines(MOVER_PHONE)) <= notices_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(stubs.sms_lines(MOVER_PHONE)) > notices_before, "the old phone is told"


def assert_no_plaintext_and_reads_audited(stubs: Stubs, streamed: set[str]) -> None:
    """No document marker in any file of the data directory; every stream audited; the
    audit chain verifies."""
    reason = REJECTION_REASON.encode("utf-8")  # a reviewer's words may quote personal data
    for path in stubs.served.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), f"document plaintext in {path.name}"
            assert reason not in path.read_bytes(), f"a decision's reason in {path.name}"
    database = stubs.served.data_dir / "identity.db"
    with sqlite3.connect(database) as conn:
        read = {
            target
            for (target,) in conn.execute(
                "SELECT target FROM audit_log WHERE action = 'document.read'"
            )
        }
    assert streamed <= read, "every document a reviewer streamed is in the audit log"
    verified = stubs.admin.VerifyAuditChain(
        admin_pb2.VerifyAuditChainRequest(), metadata=stubs.md, timeout=30
    )
    assert verified.intact
    assert not verified.truncated
