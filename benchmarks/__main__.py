"""`make bench`: Xiaohe Identity's throughput as ratios against baselines measured in the same run.

Each line reads `<measured>: <n>/s; baseline <name>: <m>/s; ratio <r>`. The
server under test runs in-process on loopback over the embedded stores (SQLite
and the embedded redis-server), as one `make serve` worker would, with the
default (OWASP) Argon2 parameters; the baselines use the same client shape,
concurrency and cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks.harness import Rate, alternating, echo_rate, line, measure_async, measure_sync
from xiaohe.identity.client.verifier import TokenVerifier
from xiaohe.identity.server.app import start_server
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.credentials.hasher import Argon2Parameters, PasswordHasher
from xiaohe.identity.server.delivery.templates import compose_code_message
from xiaohe.identity.server.sessions.tokens import AccessTokenIssuer
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async
from xiaohe.identity.tokens.jwt import keys_from_jwks
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
    recovery_pb2,
    recovery_pb2_grpc,
)

BENCH_CODE = "246810"
BENCH_PHONE = "+8613600136000"
BENCH_LOGIN = "bench.user"
PASSWORD = "Lanshan-Baiyun-2026"  # noqa: S105 - the benchmark account's password
ECHO_PAYLOAD = b"x" * 64
RECOVERY_PHONE = "+8613600136001"
RECOVERY_LOGIN = "bench.recover"
RECOVERY_NAME = "张三"
RECOVERY_ID = "11010519491231002X"
OTHER_ID = "110105198001010016"
"""A valid ID number that is not the account's: recovery with it does not match."""
RECOVERY_CALLS = 400
"""Recoveries of each kind per round, one at a time."""
ROUNDS = 3
"""Each comparison with a bar (logins, ValidateToken) alternates with its baseline this often."""
Metadata = tuple[tuple[str, str], ...]


def bench_settings(data_dir: Path) -> Settings:
    """The defaults, with the per-client budget lifted: the benchmark measures work, not limits."""
    return dataclasses.replace(
        Settings(listen="127.0.0.1:0", data_dir=data_dir),
        code_per_client_minute=10**9,
        code_verify_per_client_minute=10**9,
        code_cooldown_seconds=0,
        code_per_destination_hour=10**9,
        code_per_destination_day=10**9,
        code_per_ip_hour=10**9,
        recovery_per_phone_day=10**9,
        recovery_per_ip_hour=10**9,
        recovery_per_client_minute=10**9,
        # Every pair's number is in one prefix: lift its budget, keep the watch (all verified).
        pumping_prefix_per_hour=10**9,
        pumping_prefix_per_day=10**9,
    )


def install_known_codes(container: Container, **replaced: Any) -> None:
    """Replace only the code generator, so the client can verify without reading the outbox.

    `replaced` swaps more of the service's collaborators; only `make profile-codes` does,
    to measure what each part of the work costs.
    """
    wiring: dict[str, Any] = {
        "redis": container.redis,
        "policy": container.code_policy,
        "hmac_key": container.keyring.code_hmac_key,
        "clock": container.clock,
        "queue": container.outbox,
        "compose": compose_code_message,
        "random_digits": lambda: BENCH_CODE,
        "metrics": container.metrics,
        "audit": container.audit,
        "pumping": container.pumping_policy,
        "block_events": container.block_reporter,
    }
    container.__dict__["codes"] = CodeService(**(wiring | replaced))


Install = Callable[[Container], None]
"""What `started` does to the container before serving it."""


async def started(
    data_dir: Path, redis_url: str, install: Install = install_known_codes
) -> tuple[Container, grpc.aio.Channel, Metadata]:
    """A migrated store, a started server and an all-grants client's credentials."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    settings = bench_settings(data_dir)
    await upgrade_async(settings.effective_database_url)
    container = Container(settings, redis_url=redis_url)
    install(container)
    running = await start_server(container, settings.listen)
    container.__dict__["bench_server"] = running
    client, secret = await container.clients.create("bench", ["*"])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return container, channel, (("x-client-id", client.client_id), ("x-client-secret", secret))


async def stopped(container: Container, channel: grpc.aio.Channel) -> None:
    """Undo `started`."""
    await channel.close()
    await container.__dict__["bench_server"].stop(0)
    await container.close()


async def code_ticket(
    codes: codes_pb2_grpc.CodeServiceStub,
    phone: str,
    purpose: common_pb2.Purpose.ValueType,
    metadata: Metadata,
) -> str:
    """IssueCode then VerifyCode (the known code) for an SMS to `phone`; the ticket."""
    common = {"channel": common_pb2.CHANNEL_SMS, "destination": phone, "purpose": purpose}
    await codes.IssueCode(codes_pb2.IssueCodeRequest(**common), metadata=metadata)
    verified = await codes.VerifyCode(
        codes_pb2.VerifyCodeRequest(**common, code=BENCH_CODE), metadata=metadata
    )
    return verified.ticket


async def code_pairs(
    data_dir: Path,
    redis_url: str,
    concurrency: int,
    seconds: float,
    *,
    install: Install = install_known_codes,
    name: str = "code issue+verify",
) -> Rate:
    """IssueCode + VerifyCode pairs per second, each pair for a fresh phone number, against
    a server on a new store in `data_dir`."""
    container, channel, credentials = await started(data_dir, redis_url, install)
    stub = codes_pb2_grpc.CodeServiceStub(channel)

    async def pair(i: int) -> None:
        phone = f"+86139{i % 100_000_000:08d}"
        # A front end forwarding many users: each pair comes from its own end-user address.
        metadata = (*credentials, ("x-end-user-ip", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
        await code_ticket(stub, phone, common_pb2.PURPOSE_REGISTER, metadata)

    try:
        return await measure_async(name, pair, concurrency=concurrency, seconds=seconds)
    finally:
        await stopped(container, channel)


def argon2_verify_rate(settings: Settings, seconds: float) -> Rate:
    """Raw Argon2id verifications per second, one thread per core, the login's parameters."""
    params = Argon2Parameters(
        memory_cost=settings.argon2_memory_kib,
        time_cost=settings.argon2_time_cost,
        parallelism=settings.argon2_parallelism,
    )
    hasher = PasswordHasher(params)
    stored = hasher.hash_sync(PASSWORD)
    threads = os.cpu_count() or 1

    def one_thread(_: int) -> Rate:
        return measure_sync(
            "argon2id verify", lambda: hasher.verify_sync(stored, PASSWORD), seconds=seconds
        )

    with ThreadPoolExecutor(threads) as pool:
        rates = list(pool.map(one_thread, range(threads)))
    hasher.close()
    return Rate("argon2id verify", sum(r.per_second for r in rates))


async def register_account(
    container: Container,
    channel: grpc.aio.Channel,
    credentials: Metadata,
    *,
    phone: str = BENCH_PHONE,
    login_name: str = BENCH_LOGIN,
    profile: accounts_pb2.NaturalPersonProfile | None = None,
) -> None:
    """One natural person, registered through the real RPCs."""
    codes = codes_pb2_grpc.CodeServiceStub(channel)
    ticket = await code_ticket(codes, phone, common_pb2.PURPOSE_REGISTER, credentials)
    await accounts_pb2_grpc.AccountServiceStub(channel).Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=login_name,
            password=PASSWORD,
            phone=phone,
            phone_ticket=ticket,
            accepted_policy_version=(await container.policies.current()).version,
            natural_person=profile,
        ),
        metadata=credentials,
    )


def mint_tokens(container: Container, account_id: str, session_id: str, count: int) -> list[str]:
    """Access tokens for one live session, signed by the server's own key ring."""
    key = container.keyring.active_signing_key
    settings = container.settings
    issuer = AccessTokenIssuer(
        lambda: (key.kid, key.seed),
        settings.token_issuer,
        container.clock,
        settings.access_token_ttl_seconds,
    )
    return [
        issuer.issue(
            account_id, session_id, settings.default_audience, ["pwd"], "NATURAL_PERSON", 0
        )[0]
        for _ in range(count)
    ]


async def _constant(value: str) -> str:
    return value


def signed_parts(tokens: list[str]) -> list[tuple[bytes, bytes]]:
    """(signing input, signature) of each token, for the raw signature-check baseline."""
    out = []
    for token in tokens:
        head, payload, sig = token.split(".")
        signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        out.append((f"{head}.{payload}".encode(), signature))
    return out


async def auth_rates(
    data_dir: Path, redis_url: str, concurrency: int, seconds: float
) -> dict[str, Rate]:
    """Password logins and raw Argon2 verifies, ValidateToken RPCs and the echo baseline,
    local TokenVerifier checks and raw Ed25519 checks, by name."""
    container, channel, credentials = await started(data_dir, redis_url)
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    try:
        await register_account(container, channel, credentials)
        login_request = auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=BENCH_LOGIN, password=PASSWORD)
        )

        async def login(_i: int) -> None:
            await auth.Login(login_request, metadata=credentials)

        # Enough logins in flight to keep every hashing thread busy, below the shedding bound.
        in_flight = min(concurrency, container.settings.password_hash_queue // 2)
        # While Argon2 is measured alone the server idles (its background tasks wake
        # a few times a second).
        verifies, logins = await alternating(
            ROUNDS,
            lambda: asyncio.to_thread(argon2_verify_rate, container.settings, seconds),
            lambda: measure_async("password login", login, concurrency=in_flight, seconds=seconds),
        )
        session = (await auth.Login(login_request, metadata=credentials)).session
        validate_request = auth_pb2.ValidateTokenRequest(access_token=session.access_token)

        async def validate(_i: int) -> None:
            reply = await auth.ValidateToken(validate_request, metadata=credentials)
            if not reply.valid:
                raise AssertionError("the benchmark token stopped being valid")

        # The same session's tokens, each new to the server: every call checks a signature.
        fresh_tokens = iter(
            mint_tokens(container, session.account_id, session.session_id, 15_000 * ROUNDS)
        )

        async def validate_fresh(_i: int) -> None:
            request = auth_pb2.ValidateTokenRequest(access_token=next(fresh_tokens))
            if not (await auth.ValidateToken(request, metadata=credentials)).valid:
                raise AssertionError("a freshly minted token was refused")

        echo, validations, fresh = await alternating(
            ROUNDS,
            lambda: echo_rate(concurrency, seconds, ECHO_PAYLOAD),
            lambda: measure_async(
                "ValidateToken", validate, concurrency=concurrency, seconds=seconds
            ),
            lambda: measure_async(
                "ValidateToken (each token new)",
                validate_fresh,
                concurrency=concurrency,
                seconds=seconds,
            ),
        )

        keys = await auth.GetSigningKeys(auth_pb2.GetSigningKeysRequest(), metadata=credentials)
        tokens = [
            (await auth.Login(login_request, metadata=credentials)).session.access_token
            for _ in range(20)
        ]
        # Distinct tokens and a one-entry claims cache: every check is a real verification.
        verifier = TokenVerifier(
            lambda: _constant(keys.jwks_json),
            audience=container.settings.default_audience,
            cache_size=1,
        )
        await verifier.refresh_keys()
        cycle = itertools.cycle(tokens)
        local = measure_sync(
            "TokenVerifier local verify",
            lambda: verifier.verify_cached_keys(next(cycle)),
            seconds=seconds,
        )
        verify_key = next(iter(keys_from_jwks(keys.jwks_json).values()))
        parts = itertools.cycle(signed_parts(tokens))
        raw = measure_sync(
            "ed25519 verify (libsodium)",
            lambda: verify_key.verify(*next(parts)),
            seconds=seconds,
        )
        return {
            "logins": logins,
            "verifies": verifies,
            "echo": echo,
            "validations": validations,
            "fresh": fresh,
            "local": local,
            "raw": raw,
        }
    finally:
        await stopped(container, channel)


async def recovery_rates(data_dir: Path, redis_url: str) -> dict[str, Rate]:
    """RecoverAccount with and without a match, one call at a time, alternating.

    A mismatch must not be told apart from a match by its answer or its time (issue 9,
    "same timing within noise"). Both present a fresh RECOVER_ACCOUNT ticket of the
    account's phone (only a bound phone gets a code, so only its holder gets this far),
    with the account's details or with another ID number; tickets are obtained between
    the timed calls, and the two kinds take turns going first. Each rate is
    1 / mean latency.
    """
    container, channel, credentials = await started(data_dir, redis_url)
    codes = codes_pb2_grpc.CodeServiceStub(channel)
    recovery = recovery_pb2_grpc.RecoveryServiceStub(channel)
    await register_account(
        container,
        channel,
        credentials,
        phone=RECOVERY_PHONE,
        login_name=RECOVERY_LOGIN,
        profile=accounts_pb2.NaturalPersonProfile(
            name=RECOVERY_NAME, id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=RECOVERY_ID
        ),
    )
    kinds = {
        "recovery with a match": (RECOVERY_PHONE, RECOVERY_ID),
        "recovery without a match": (RECOVERY_PHONE, OTHER_ID),
    }

    def end_user(i: int) -> Metadata:
        """A front end forwarding many users: each recovery comes from its own address."""
        return (*credentials, ("x-end-user-ip", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))

    async def recover(phone: str, id_number: str, proof: str, metadata: Metadata) -> float:
        request = recovery_pb2.RecoverAccountRequest(
            natural_person=recovery_pb2.NaturalPersonIdentity(
                name=RECOVERY_NAME, id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=id_number
            ),
            phone=phone,
            phone_ticket=proof,
        )
        started_at = time.perf_counter()
        await recovery.RecoverAccount(request, metadata=metadata)
        return time.perf_counter() - started_at

    latencies: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        for rnd in range(ROUNDS + 1):  # the first round warms up and is not counted
            for i in range(RECOVERY_CALLS):
                metadata = end_user(rnd * RECOVERY_CALLS + i)
                proofs = {
                    name: await code_ticket(
                        codes, phone, common_pb2.PURPOSE_RECOVER_ACCOUNT, metadata
                    )
                    for name, (phone, _) in kinds.items()
                }
                order = list(kinds.items())
                if i % 2:
                    order.reverse()
                for name, (phone, id_number) in order:
                    took = await recover(phone, id_number, proofs[name], metadata)
                    if rnd:
                        latencies[name].append(took)
    finally:
        await stopped(container, channel)
    return {name: Rate(name, 1 / statistics.fmean(taken)) for name, taken in latencies.items()}


def machine() -> str:
    """One line about this machine: CPU model, cores, memory, Python."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    return (
        f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


CODE_PATH_PROFILE = """\
## Where the code path's time goes

`make profile-codes` measures the pairs again with parts of the work taken out, each
variant on a new store and in alternation with the echo baseline (3 rounds of 4 s),
and prints them in echo units: how many bare echo calls cost as much as one pair. The
bar of 0.25 is 4 units. Run of 2026-12-03 19:42 UTC on this machine (echo 1994/s):

| variant | pairs/s | ratio | echo units |
|---|---|---|---|
| as served | 210 | 0.11 | 9.5 |
| without audit records | 240 | 0.12 | 8.3 |
| ... and a provider that takes all at once | 285 | 0.14 | 7.0 |
| ... or outbox | 410 | 0.21 | 4.9 |
| ... or caller windows | 538 | 0.27 | 3.7 |
| handlers doing nothing | 946 | 0.47 | 2.1 |

So a pair's 9.5 units are: the two audit records 1.2; the dev outbox file's append
1.3; the outbox row, its hand-off to the dispatcher and the recorded outcome 2.1; the
per-IP and per-client windows 1.2; the destination's scripts and the handlers' own
work 1.6; and 2.1 for two RPCs through the server, the interceptor (client
authentication, grants, context, metrics, access log) and the servicer. The host's
speed moves these figures by a fifth from run to run: a run seven minutes earlier
printed 12.0, 10.2, 9.9, 7.0, 4.7 and 2.0 units.

Since the run of 16:40 (14.5 units as served), the audit records, outbox rows and
delivery outcomes of concurrent requests shared one group commit, the dispatcher's
statements are built once, and the dev file provider appends concurrent messages with
one fsync. Measured old against new in alternation (one round of 4 s each, six times
each, `as served`): medians 11.2 and 10.3 units, so the tuning is worth about a tenth;
most of the difference from the 16:40 table is the host. At this load a batch holds
1.3 to 1.6 writes on average: the requests are spread out, and each transaction's
fixed cost is paid nearly once per write. After these runs the audit records went back
to transactions of their own (on PostgreSQL the appenders' lock would otherwise be held
across the other writes of the batch); outbox rows and outcomes still share one. The same
A/B again after that (20:10 UTC): medians 12.7 and 11.0 units; in the three pairs where
the new code ran first (the host was speeding up during the run), 11.8 and 10.9.

Why the bar of 0.25 is not met: the floor of two RPCs (2.1 units) and what every pair
needs before any durable write (the caller windows, the destination's scripts and the
handlers' checks: 2.8 units) already exceed the 4 units the bar leaves. Even with no audit
records and no outbox at all the pair measures 0.14 to 0.21; only a pair that records
nothing, sends nothing and charges no caller window comes near 0.25. Moving the writes
off the request (appended to Redis by the code's own script, written to SQL and sent
by a separate relay process, their durability Redis's until relayed) would approach
the `... or outbox` line, not 0.25. So the bar needs a decision on the measure (for
instance a bar near 0.1 for the full path, with the variants above as the measure of
each part) or on the server stack.
"""


SCALING_SECTION = "## Scaling"
"""Written by `make scaling` (benchmarks/scaling.py); `make bench` keeps it."""


def write_report(path: Path, lines: list[str], seconds: float, concurrency: int) -> None:
    """Replace docs/performance.md with this run's results, keeping its Scaling section."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(f"    {text}" for text in lines)
    kept = ""
    if path.exists() and SCALING_SECTION in (previous := path.read_text()):
        kept = "\n" + SCALING_SECTION + previous.split(SCALING_SECTION, 1)[1]
    path.write_text(
        f"""# Performance

Written by `make bench` ({now}); every number below comes from one run on one machine.

- Machine: {machine()}
- Setup: one in-process worker on the embedded stores (SQLite, embedded redis-server),
  OWASP Argon2id (m=19 MiB, t=2, p=1), loopback gRPC, {concurrency} calls in flight,
  {seconds:g} s per measurement after a warm-up. Each baseline is measured in the same run,
  on the same cores, with the same client shape; code pairs, password logins and
  ValidateToken alternate with their baselines, {ROUNDS} rounds each, averaged.

{body}

How to read it:
- `code issue+verify`: an IssueCode and a VerifyCode for a fresh number per pair, each
  with its limits, outbox row, delivery to the dev provider and audit records, against
  one bare grpc.aio echo call.
- `password login`: Login by login name and password (lookup, lockout scripts, Argon2id,
  session, audit) against the raw Argon2id verify capacity of all cores.
- `ValidateToken`: the RPC (client authentication, revocation lookup) for one token
  presented again and again, as a business system does on every request of a session:
  after the first call its verified claims come from the server's cache until expiry.
- `ValidateToken (each token new)`: the same with a token the server has not seen, so
  every call also checks an Ed25519 signature.
- `TokenVerifier local verify`: the SDK's local check of distinct tokens (no claims cache)
  against the bare libsodium Ed25519 verify of the same tokens.
- `recovery without a match`: RecoverAccount with the bound phone and a wrong ID number
  against RecoverAccount with a match, one call at a time, taking turns going first,
  {RECOVERY_CALLS} of each per round, {ROUNDS} rounds after a warm-up, each with a fresh
  ticket obtained between the timed calls; rate = 1 / mean latency. Only the phone's
  holder can get this far, and a match also sends them the login name by SMS.

{CODE_PATH_PROFILE}{kept}"""
    )


async def main(seconds: float, concurrency: int, report: Path | None) -> None:
    """Measure everything in one run and print one comparison per line."""
    with tempfile.TemporaryDirectory(prefix="xiaohe-bench-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis")
        redis_url = redis_server.start()
        try:
            stores = itertools.count()
            echo, pairs = await alternating(
                ROUNDS,
                lambda: echo_rate(concurrency, seconds, ECHO_PAYLOAD),
                lambda: code_pairs(root / f"codes-{next(stores)}", redis_url, concurrency, seconds),
            )
            auth = await auth_rates(root / "auth", redis_url, concurrency, seconds)
            recoveries = await recovery_rates(root / "recovery", redis_url)
            matched = recoveries["recovery with a match"]
            lines = [
                line(measured, baseline)
                for measured, baseline in (
                    (pairs, echo),
                    (auth["logins"], auth["verifies"]),
                    (auth["validations"], auth["echo"]),
                    (auth["fresh"], auth["echo"]),
                    (auth["local"], auth["raw"]),
                    (recoveries["recovery without a match"], matched),
                )
            ]
        finally:
            redis_server.stop()
    for text in lines:
        print(text, flush=True)
    if report is not None:
        write_report(report, lines, seconds, concurrency)
        print(f"written to {report}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--report", type=Path, default=None, help="write the results as Markdown to this file"
    )
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency, args.report))
