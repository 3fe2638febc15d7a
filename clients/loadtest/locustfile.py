"""Locust users for Xiaohe Identity: a weighted mix of real flows, and the echo user.

Loaded only by the Locust process (`python -m locust -f clients/loadtest/locustfile.py`,
started by the driver, or by hand as a `--worker` on another machine): importing it
patches grpc for gevent, which must never happen inside pytest or the driver.

Each `IdentityUser` is one front end serving a stream of end users: every iteration
picks a scenario by weight, each flow comes from a fresh address of the benchmarking
range, and users share a per-process pool of test accounts (seeded by the driver,
grown by registrations). `EchoUser` calls the bench's echo server with the same
client stack; the driver runs it first to measure the generator's own ceiling.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists: gRPC's I/O must yield to gevent

import contextlib  # noqa: E402 - after the gevent initialisation above
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.argument_parser import LocustArgumentParser  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

from clients.loadtest import flows  # noqa: E402
from clients.loadtest.outbox import OutboxReader  # noqa: E402
from clients.loadtest.rpc import (  # noqa: E402
    CallFailed,
    ClientCredentials,
    FlowFailed,
    Identity,
    Recorder,
    open_channel,
)
from clients.loadtest.scenarios import parse_weights  # noqa: E402
from clients.loadtest.testdata import RunData, end_user_ip  # noqa: E402

ECHO_METHOD = "/bench.Echo/Echo"
ECHO_PAYLOAD = b"\x0a\x20" + b"x" * 32  # about the size of a ValidateToken request's header


SKIPPED_SUFFIX = "_skipped.json"


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    # Importing this file and grpc takes a second without running gevent's loop, so
    # libev's cached clock is that much behind: a timer set now (Locust's --run-time,
    # the CSV writer's interval) would fire early by as much. Bring the clock up to date.
    gevent.get_hub().loop.update_now()
    _count_skipped_flows(environment)


def _count_skipped_flows(environment: Environment) -> None:
    """Count flows that could not run (not RPCs, so not Locust requests) across processes.

    Workers send their counts with each stats report; the master (or the only
    process) writes the sum next to Locust's CSV files when it quits.
    """
    skipped: Counter[str] = Counter()
    environment.xiaohe_skipped = skipped  # type: ignore[attr-defined]

    def send(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
        data["xiaohe_skipped"] = dict(skipped)
        skipped.clear()

    def receive(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
        skipped.update(data.get("xiaohe_skipped", {}))

    def write(environment: Environment, **_kwargs: Any) -> None:
        options = environment.parsed_options
        if (
            options is None
            or not options.csv_prefix
            or isinstance(environment.runner, WorkerRunner)
        ):
            return
        Path(options.csv_prefix + SKIPPED_SUFFIX).write_text(json.dumps(dict(skipped)))

    environment.events.report_to_master.add_listener(send)
    environment.events.worker_report.add_listener(receive)
    environment.events.quitting.add_listener(write)


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser, **_kwargs: Any) -> None:
    group = parser.add_argument_group("Xiaohe Identity load test")
    group.add_argument("--xh-run-id", default="", help="the run's id (test data names)")
    group.add_argument("--xh-accounts", type=int, default=0, help="accounts the driver seeded")
    group.add_argument("--xh-skip", default="", help="seeded indices that failed, comma-separated")
    group.add_argument("--xh-seeded-at", type=float, default=0.0, help="epoch s of seeding")
    group.add_argument("--xh-slots", type=int, default=1, help="Locust processes sharing them")
    group.add_argument("--xh-outbox", default="", help="the dev SMS outbox file, if readable")
    group.add_argument("--xh-scenarios", default="", help="scenario:weight,… (see scenarios.py)")
    group.add_argument("--xh-think", type=float, default=0.0, help="mean pause between flows, s")
    group.add_argument("--xh-channels", type=int, default=8, help="gRPC channels per process")
    group.add_argument("--xh-timeout", type=float, default=10.0, help="deadline of each call, s")


@dataclass
class Shared:
    """What the users of one Locust process share: channels, accounts, the outbox reader.

    Created on the first user's start, after Locust has forked its processes, because
    a gRPC channel must not cross a fork.
    """

    credentials: ClientCredentials | None
    data: RunData | None
    outbox: OutboxReader | None
    channels: list[grpc.Channel]
    accounts: list[flows.Account] = field(default_factory=list)
    slot: int = 0
    registrations: int = 0
    accepted_policy: int | None = None


def _channels(environment: Environment) -> list[grpc.Channel]:
    """The process's channels to the target, opened on first use (after Locust's fork)."""
    existing: list[grpc.Channel] | None = getattr(environment, "xiaohe_channels", None)
    if existing is not None:
        return existing
    options = environment.parsed_options
    assert options is not None
    assert environment.host
    channels = [open_channel(environment.host) for _ in range(options.xh_channels)]
    environment.xiaohe_channels = channels  # type: ignore[attr-defined]
    return channels


def _shared(environment: Environment) -> Shared:
    """The process's Shared, made on first use (Locust has no per-process user state hook)."""
    existing: Shared | None = getattr(environment, "xiaohe_shared", None)
    if existing is not None:
        return existing
    options = environment.parsed_options
    assert options is not None
    credentials = ClientCredentials.from_env()
    runner = environment.runner
    slot = int(getattr(runner, "worker_index", 0) or 0)
    data = RunData(options.xh_run_id, credentials.client_secret) if credentials else None
    outbox_path = Path(options.xh_outbox) if options.xh_outbox else None
    shared = Shared(
        credentials=credentials,
        data=data,
        outbox=OutboxReader(outbox_path) if outbox_path else None,
        channels=_channels(environment),
        slot=slot,
    )
    if data is not None:
        skip = {int(i) for i in options.xh_skip.split(",") if i}
        # Seeding sent each phone a code: its cooldown runs from then.
        coded_at = time.monotonic() - max(0.0, time.time() - float(options.xh_seeded_at))
        slots = max(1, options.xh_slots)
        for index in range(options.xh_accounts):
            if index in skip or index % slots != slot % slots:
                continue
            login_name = data.seed_login_name(index)
            account = flows.Account(login_name, data.phone(index), data.password(login_name))
            account.codes_sent_at.append(coded_at)
            shared.accounts.append(account)
    environment.xiaohe_shared = shared  # type: ignore[attr-defined]
    return shared


def _recorder(environment: Environment) -> Recorder:
    def record(rpc: str, milliseconds: float, size: int, error: str | None) -> None:
        environment.events.request.fire(
            request_type="grpc",
            name=rpc,
            response_time=milliseconds,
            response_length=size,
            exception=error,
            context={},
        )

    return record


class IdentityUser(User):
    """One front end: runs flows picked by weight, one after another."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.rng = random.Random()
        self.shared: Shared | None = None
        self.identity: Identity | None = None
        self.tokens: flows.Tokens | None = None
        self.weights: dict[str, int] = {}

    def wait_time(self) -> float:
        """Think time between flows: uniform around the configured mean (0 by default)."""
        options = self.environment.parsed_options
        mean = float(options.xh_think) if options is not None else 0.0
        return self.rng.uniform(0.5 * mean, 1.5 * mean)

    def on_start(self) -> None:
        """Join the process's shared state and make this user's client."""
        shared = _shared(self.environment)
        if shared.credentials is None:
            raise FlowFailed("no client credentials in the environment")
        options = self.environment.parsed_options
        assert options is not None
        self.shared = shared
        self.identity = Identity(
            self.rng.choice(shared.channels),
            shared.credentials,
            _recorder(self.environment),
            timeout=float(options.xh_timeout),
        )
        self.weights = parse_weights(options.xh_scenarios, codes=shared.outbox is not None)

    def on_stop(self) -> None:
        """Clean up: end this user's session (unrecorded)."""
        shared, tokens = self.shared, self.tokens
        if shared is None or shared.credentials is None or tokens is None:
            return
        quiet = Identity(shared.channels[0], shared.credentials, timeout=2.0)
        with contextlib.suppress(CallFailed):
            flows.logout(quiet, tokens, end_user_ip(self.rng))
        self.tokens = None

    @task
    def flow(self) -> None:
        """One flow, picked by weight."""
        if not self.weights:
            return
        name = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        try:
            getattr(self, f"_{name}")()
        except CallFailed:
            pass  # recorded under the RPC with its status code
        except FlowFailed as exc:
            skipped: Counter[str] = self.environment.xiaohe_skipped
            skipped[f"{name}\t{exc}"] += 1

    # --- scenarios -------------------------------------------------------------------

    def _parts(self) -> tuple[Shared, Identity]:
        assert self.shared is not None
        assert self.identity is not None
        return self.shared, self.identity

    def _session(self) -> flows.Tokens:
        shared, identity = self._parts()
        if self.tokens is None:
            if not shared.accounts:
                raise FlowFailed("no test account to log in with")
            account = self.rng.choice(shared.accounts)
            self.tokens = flows.password_login(identity, account, end_user_ip(self.rng))
        return self.tokens

    def _validate(self) -> None:
        _shared_state, identity = self._parts()
        if not flows.validate(identity, self._session()):
            self.tokens = None  # expired or ended: the front end signs in again

    def _refresh(self) -> None:
        _shared_state, identity = self._parts()
        tokens = self._session()
        self.tokens = None  # a failed refresh leaves no usable session
        self.tokens = flows.refresh(identity, tokens, end_user_ip(self.rng))

    def _password_login(self) -> None:
        shared, identity = self._parts()
        if not shared.accounts:
            raise FlowFailed("no test account to log in with")
        account = self.rng.choice(shared.accounts)
        self._replace(flows.password_login(identity, account, end_user_ip(self.rng)))

    def _sms_login(self) -> None:
        shared, identity = self._parts()
        assert shared.outbox is not None
        account = self._phone_ready(shared)
        self._replace(flows.sms_login(identity, shared.outbox, account, end_user_ip(self.rng)))

    def _reset_password(self) -> None:
        shared, identity = self._parts()
        assert shared.outbox is not None
        assert shared.data is not None
        account = self._phone_ready(shared)
        flows.reset_password(identity, shared.outbox, shared.data, account, end_user_ip(self.rng))

    def _register(self) -> None:
        shared, identity = self._parts()
        assert shared.outbox is not None
        assert shared.data is not None
        ip = end_user_ip(self.rng)
        if shared.accepted_policy is None:
            shared.accepted_policy = flows.policy_version(identity)
        index = shared.data.registration_index(shared.slot, shared.registrations)
        shared.registrations += 1
        login_name = shared.data.registration_login_name(index)
        account = flows.Account(
            login_name, shared.data.phone(index), shared.data.password(login_name)
        )
        flows.register(identity, shared.outbox, account, shared.accepted_policy, ip)
        shared.accounts.append(account)

    def _issue_code(self) -> None:
        _shared_state, identity = self._parts()
        flows.request_code(identity, self.rng, flows.Rejections(), end_user_ip(self.rng))

    def _phone_ready(self, shared: Shared) -> flows.Account:
        now = time.monotonic()
        candidates = self.rng.sample(shared.accounts, min(32, len(shared.accounts)))
        for account in candidates:
            if account.phone_ready(now):
                return account
        raise FlowFailed("no test account whose phone is out of its code cooldown")

    def _replace(self, tokens: flows.Tokens) -> None:
        """A new login: keep the new session, sign the previous one out."""
        previous, self.tokens = self.tokens, tokens
        _shared_state, identity = self._parts()
        if previous is not None:
            flows.logout(identity, previous, end_user_ip(self.rng))


class EchoUser(User):
    """The bench's echo RPC with the same client stack: the generator's ceiling."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.call: grpc.UnaryUnaryMultiCallable[bytes, bytes] | None = None
        self.record = _recorder(environment)

    def on_start(self) -> None:
        """Open a channel to the echo server."""
        self.call = self.rng_channel().unary_unary(
            ECHO_METHOD, request_serializer=None, response_deserializer=None
        )

    def rng_channel(self) -> grpc.Channel:
        """One of the process's channels, as IdentityUser picks them."""
        return random.choice(_channels(self.environment))

    @task
    def echo(self) -> None:
        """One echo call."""
        assert self.call is not None
        started = time.perf_counter()
        try:
            self.call(ECHO_PAYLOAD, timeout=10)
        except grpc.RpcError as exc:
            status = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            self.record("Echo", (time.perf_counter() - started) * 1000, 0, status.name)
            return
        self.record("Echo", (time.perf_counter() - started) * 1000, len(ECHO_PAYLOAD), None)
