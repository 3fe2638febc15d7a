"""A business system's side against `xiaohe-identity serve` (issue 13 §2 SDK part, §3).

- The example workbench service (clients/examples/workbench) authenticates calls
  with the SDK's interceptor: a token of its audience gets in and the handler sees
  its claims; no token and a token for another audience are refused. After Logout,
  it refuses the session's token within one second, with local verification only:
  the server's metrics show no ValidateToken call (and do count one made on purpose).
- The JWKS over HTTP: `curl` gets it with its cache headers and a 304 on
  revalidation, and PyJWT verifies a Login access token against it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt as pyjwt
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.struct_pb2 import Struct

from tests.e2e.conftest import CLI, ServedProcess, free_port, start_serve
from tests.e2e.test_identity_flow import PASSWORD, Flow
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, common_pb2, privacy_pb2

REPO = Path(__file__).resolve().parents[2]
WORKBENCH = "/xiaohe.examples.workbench.v1.Workbench"
AUDIENCE = "workbench"
PHONE = "+8613812345678"


def register_and_login(flow: Flow, audience: str) -> auth_pb2.LoginResponse:
    version = flow.privacy.GetPolicy(
        privacy_pb2.GetPolicyRequest(), metadata=flow.md, timeout=10
    ).version
    flow.accounts.Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name="li.na",
            password=PASSWORD,
            phone=PHONE,
            phone_ticket=flow.ticket(PHONE, common_pb2.PURPOSE_REGISTER),
            accepted_policy_version=version,
            natural_person=accounts_pb2.NaturalPersonProfile(
                name="李娜",
                id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
                id_number="11010519491231002X",
            ),
        ),
        metadata=flow.md,
        timeout=10,
    )
    return login(flow, audience)


def login(flow: Flow, audience: str) -> auth_pb2.LoginResponse:
    return flow.auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier="li.na", password=PASSWORD),
            audience=audience,
        ),
        metadata=flow.md,
        timeout=10,
    )


def rpc_count(served: ServedProcess, method: str) -> float:
    """The server's `xiaohe_rpc_requests_total` for `method`, all status codes together."""
    url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf'^xiaohe_rpc_requests_total\{{[^}}]*method="{method}"[^}}]*\}} (\S+)$')
    return sum(float(m.group(1)) for m in map(pattern.match, text.splitlines()) if m)


Workbench = tuple[ServedProcess, str, "subprocess.Popen[bytes]"]
"""The served identity service, the example's address, and its process."""


@pytest.fixture
def workbench(tmp_path: Path, serve_factory: list[ServedProcess]) -> Iterator[Workbench]:
    """`serve`, a `validate` client for the workbench, and the example running with it."""
    served = start_serve(tmp_path / "var")
    serve_factory.append(served)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_")}
    env["XIAOHE_IDENTITY_DATA_DIR"] = str(served.data_dir)
    created = subprocess.run(
        [CLI, "clients", "create", "workbench", "--grant", "validate"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    client_file = tmp_path / "workbench-client.json"
    client_file.write_bytes(created.stdout)
    client_file.chmod(0o600)
    out = tmp_path / "workbench.out"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "clients.examples.workbench"),
                *("--identity", served.target, "--listen", "127.0.0.1:0"),
                *("--audience", AUDIENCE, "--client-file", str(client_file)),
            ],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"workbench serving on (\S+:\d+)", out.read_text(errors="replace"))
            time.sleep(0.1)
        assert found is not None, out.read_text(errors="replace")[-4000:]
        yield served, found.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def call(channel: grpc.Channel, method: str, token: str | None, request: object = None) -> Struct:
    is_struct = isinstance(request, Struct)
    stub = channel.unary_unary(
        f"{WORKBENCH}/{method}",
        request_serializer=(Struct if is_struct else Empty).SerializeToString,
        response_deserializer=Struct.FromString,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    reply: Struct = stub(request if is_struct else Empty(), metadata=metadata, timeout=10)
    return reply


def refusal(channel: grpc.Channel, token: str | None) -> tuple[grpc.StatusCode, str] | None:
    try:
        call(channel, "WhoAmI", token)
    except grpc.RpcError as err:
        return err.code(), err.details()  # type: ignore[attr-defined]
    return None


def test_the_example_service_authenticates_and_refuses_a_logged_out_token_within_a_second(
    workbench: Workbench,
) -> None:
    """T3: after Logout a business service verifying locally refuses the token within 1 s."""
    served, address, process = workbench
    with grpc.insecure_channel(served.target) as identity, grpc.insecure_channel(address) as bench:
        flow = Flow(served, identity)
        session = register_and_login(flow, AUDIENCE).session
        other_audience = login(flow, "").session  # the default audience

        me = call(bench, "WhoAmI", session.access_token)
        assert me["account_id"] == session.account_id
        assert me["session_id"]
        assert list(me["auth_methods"]) == ["pwd"]
        task = Struct()
        task.update({"title": "季度申报材料"})
        assert call(bench, "AddTask", session.access_token, task)["count"] == 1
        listed = call(bench, "ListTasks", session.access_token)
        assert list(listed["tasks"]) == ["季度申报材料"]

        assert refusal(bench, None) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "a bearer token is required",
        )
        assert refusal(bench, other_audience.access_token) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid token: wrong_audience",
        )
        assert refusal(bench, session.access_token) is None

        flow.auth.Logout(
            auth_pb2.LogoutRequest(access_token=session.access_token), metadata=flow.md, timeout=10
        )
        logged_out = time.monotonic()
        while (answer := refusal(bench, session.access_token)) is None:
            assert time.monotonic() - logged_out < 5, "the logged-out token is still accepted"
            time.sleep(0.02)
        took = time.monotonic() - logged_out
        assert answer == (grpc.StatusCode.UNAUTHENTICATED, "invalid token: revoked")
        assert took < 1.0, f"refused only after {took:.2f} s"

        # Local verification only: nobody called ValidateToken (the counter does count it).
        assert rpc_count(served, "ValidateToken") == 0
        assert not flow.validate(session.access_token).valid
        assert rpc_count(served, "ValidateToken") == 1
    assert process.poll() is None, "the example stopped on its own"


def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """`curl -sS -i` of a loopback URL: status, headers (lower-case names), body."""
    ran = subprocess.run(["curl", "-sS", "-i", *args], capture_output=True, check=True, timeout=30)
    head, _, body = ran.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_curl_gets_the_jwks_over_http_and_pyjwt_verifies_a_token_with_it(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    port = free_port()
    served = start_serve(tmp_path / "var", XIAOHE_IDENTITY_CALLBACK_LISTEN=f"127.0.0.1:{port}")
    serve_factory.append(served)
    url = f"http://127.0.0.1:{port}/.well-known/jwks.json"

    status, headers, body = curl(url)
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "public, max-age=300"
    etag = headers["etag"]
    jwks = json.loads(body)
    assert {(k["kty"], k["crv"]) for k in jwks["keys"]} == {("OKP", "Ed25519")}

    status, headers, body = curl("-H", f"If-None-Match: {etag}", url)
    assert (status, headers["etag"], body) == (304, etag, b"")

    with grpc.insecure_channel(served.target) as identity:
        token = register_and_login(Flow(served, identity), AUDIENCE).session.access_token
    key_set = pyjwt.PyJWKSet.from_json(json.dumps(jwks))
    kid = pyjwt.get_unverified_header(token)["kid"]
    claims = pyjwt.decode(token, key_set[kid].key, algorithms=["EdDSA"], audience=AUDIENCE)
    assert claims["aud"] == AUDIENCE
    # A gateway's JWKS client fetches the URL itself and picks the key by kid.
    signing_key = pyjwt.PyJWKClient(url).get_signing_key_from_jwt(token)
    assert pyjwt.decode(token, signing_key.key, algorithms=["EdDSA"], audience=AUDIENCE)["sub"]
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, signing_key.key, algorithms=["EdDSA"], audience="xiaohe-platform")
