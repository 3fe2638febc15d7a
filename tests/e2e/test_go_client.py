"""The Go example (clients/go) against `xiaohe-identity serve`, built from the generated stubs.

`go build` in GOPATH mode against Debian's grpc-go and genproto (`make go-toolchain`),
then the program signs in, validates the token and prints the google.rpc details of
an INVALID_ARGUMENT (BadRequest) and a RESOURCE_EXHAUSTED (RetryInfo, QuotaFailure).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import ServedProcess, start_serve
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
)

GO_PATH = Path(__file__).resolve().parents[2] / "clients" / "go"
PASSWORD = "Qingshan-Rivers-2024"


def register(served: ServedProcess, login_name: str, phone: str) -> None:
    """A natural person with a verified phone, through the Python stubs."""
    served.issue_code(phone)
    deadline = time.monotonic() + 10
    while not [m for m in served.outbox() if m["to"] == phone] and time.monotonic() < deadline:
        time.sleep(0.05)
    text = next(m["text"] for m in served.outbox() if m["to"] == phone)
    code = re.search(r"\d{6}", text)
    assert code is not None
    request = {"channel": common_pb2.CHANNEL_SMS, "destination": phone}
    with grpc.insecure_channel(served.target) as channel:
        ticket = (
            codes_pb2_grpc.CodeServiceStub(channel)
            .VerifyCode(
                codes_pb2.VerifyCodeRequest(
                    **request, purpose=common_pb2.PURPOSE_REGISTER, code=code.group(0)
                ),
                metadata=served.metadata,
                timeout=10,
            )
            .ticket
        )
        policy = privacy_pb2_grpc.PrivacyServiceStub(channel).GetPolicy(
            privacy_pb2.GetPolicyRequest(), metadata=served.metadata, timeout=10
        )
        accounts_pb2_grpc.AccountServiceStub(channel).Register(
            accounts_pb2.RegisterRequest(
                subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
                login_name=login_name,
                password=PASSWORD,
                phone=phone,
                phone_ticket=ticket,
                accepted_policy_version=policy.version,
            ),
            metadata=served.metadata,
            timeout=10,
        )


@pytest.mark.timeout(300)  # the first build of grpc-go takes 20-60 s
def test_go_example_against_serve(tmp_path: Path, serve_factory: list[ServedProcess]) -> None:
    go = shutil.which("go")
    assert go is not None, "Go is not installed: run `make go-toolchain`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_")}
    env.update(GO111MODULE="off", GOFLAGS="", GOPATH=f"{GO_PATH}:/usr/share/gocode")
    env.setdefault("GOCACHE", str(Path(env.get("HOME", str(tmp_path))) / ".cache" / "go-build"))
    program = tmp_path / "example"
    built = subprocess.run(
        [go, "build", "-o", str(program), "xiaohe/identity/example"],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr

    served = start_serve(tmp_path / "var")
    serve_factory.append(served)
    register(served, "go_example", "+8613912345678")
    client_id, client_secret = (value for _, value in served.metadata)
    env.update(
        XIAOHE_TARGET=served.target, XIAOHE_CLIENT_ID=client_id, XIAOHE_CLIENT_SECRET=client_secret
    )
    ran = subprocess.run(
        [str(program), "go_example", PASSWORD, "+8613912340000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    assert ran.stdout.splitlines() == [
        "next step: NEXT_STEP_NONE",
        "valid: true same account: true",
        "bad phone: InvalidArgument INVALID_ARGUMENT [destination]",
        "second code: ResourceExhausted RATE_LIMITED retry after 1m0s"
        " quota [code.issue.destination]",
    ], output
