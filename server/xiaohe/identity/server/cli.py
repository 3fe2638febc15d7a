"""`xiaohe-identity`: serve, migrate, and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from xiaohe.identity.server.audit.checkpoints import ChainAnchor
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.audit.sink import record_quietly
from xiaohe.identity.server.callers.registry import ClientRegistry
from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.config import ENV_PREFIX, Settings, SettingsError, load_settings
from xiaohe.identity.server.container import Container, open_keyring
from xiaohe.identity.server.crypto.keyring import KeyRing, KeyRingError
from xiaohe.identity.server.delivery.lifecycle import DeliveryLog
from xiaohe.identity.server.errors import IdentityError, InvalidArgument
from xiaohe.identity.server.observability.logging import configure_logging
from xiaohe.identity.server.observability.metrics import MetricsListenError
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.privacy.requests import RequestState
from xiaohe.identity.server.ratelimit.pumping import PrefixBlock
from xiaohe.identity.server.review.models import OPERATOR_ROLES, REVIEW_ROLE
from xiaohe.identity.server.shared.identifiers import IdentifierKind, normalize_login_name
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async

log = logging.getLogger("xiaohe.identity.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xiaohe-identity", description="Xiaohe Identity server and operator tools."
    )
    parser.add_argument("--config", help="TOML settings file (else XIAOHE_IDENTITY_CONFIG_FILE)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    _add_health_command(sub)

    clients = sub.add_parser("clients", help="manage API clients").add_subparsers(
        dest="action", required=True
    )
    create = clients.add_parser("create", help="create a client; prints its secret once")
    create.add_argument("name")
    create.add_argument("--grant", action="append", default=[], help="grant (repeatable)")
    clients.add_parser("list", help="list clients")
    revoke = clients.add_parser("revoke", help="revoke a client")
    revoke.add_argument("client_id")
    grants = clients.add_parser(
        "grants",
        help="replace a client's grants (field:NAME[:full], purpose:NAME too); audited,"
        " in force on every worker within a second",
    )
    grants.add_argument("client_id")
    grants.add_argument("--grant", action="append", default=[], help="grant (repeatable)")

    _add_operator_commands(sub)
    audit = sub.add_parser("audit", help="audit log").add_subparsers(dest="action", required=True)
    verify = audit.add_parser(
        "verify", help="check the audit chain, its signed checkpoints and optionally an anchor"
    )
    verify.add_argument("--anchor-seq", type=int, help="seq of a checkpoint saved from the log")
    verify.add_argument("--anchor-mac", help="that checkpoint's MAC, as logged (colons allowed)")

    policy = sub.add_parser("policy", help="privacy policy versions").add_subparsers(
        dest="action", required=True
    )
    publish = policy.add_parser("publish", help="publish FILE as the next policy version")
    publish.add_argument("file", help="the policy text (UTF-8 Markdown)")
    # -- issue 14: notify-only policy versions --
    publish.add_argument(
        "--notify-only",
        action="store_true",
        help="the version changes no purpose of processing: sign-in is not gated, "
        "accounts are told at their next sign-in",
    )
    # -- end notify-only policy versions --

    _add_delivery_commands(sub)
    _add_deactivation_commands(sub)  # issue 14: deactivation
    pumping = sub.add_parser("pumping", help="SMS-pumping prefix blocks").add_subparsers(
        dest="action", required=True
    )
    pumping.add_parser("list", help="number prefixes throttled now")
    lift = pumping.add_parser("lift", help="lift the block on PREFIX and forget its counts")
    lift.add_argument("prefix", help="country code and 7 digits, e.g. 86-1700123")

    keys = sub.add_parser("keys", help="key ring").add_subparsers(dest="action", required=True)
    keys.add_parser("init", help="create the key ring file (for an external database)")
    rotate = keys.add_parser("rotate", help="new master key; re-wraps data keys, data untouched")
    rotate.add_argument(
        "--no-rewrap",
        action="store_true",
        help="change the ring file only; run `keys rewrap` once every replica has it",
    )
    keys.add_parser("rewrap", help="re-wrap data keys under the ring's active master key")
    rotate_signing = keys.add_parser(
        "rotate-signing",
        help="activate the staged token signing key (or a new one); old one kept until expiry",
    )
    rotate_signing.add_argument(
        "--stage",
        action="store_true",
        help="publish the next signing key without signing with it yet; run `keys "
        "rotate-signing` once every replica has it and gateways' JWKS caches have expired",
    )
    _add_retention_commands(sub)

    _add_requests_commands(sub)  # issue 14: rights requests
    return parser


# -- issue 14: retention --


def _add_retention_commands(sub: Any) -> None:
    retention = sub.add_parser(
        "retention", help="delete data past its retention period (docs/privacy.md)"
    ).add_subparsers(dest="action", required=True)
    sweep = retention.add_parser(
        "sweep", help="run the retention sweep now; prints the items removed per kind"
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="only count what is due, per kind; delete nothing"
    )


async def _retention(args: argparse.Namespace, settings: Settings) -> int:
    """Run (or count) the retention sweep; exit 1 when a kind failed."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    await upgrade_async(settings.effective_database_url)
    # The sweep touches SQL, the document files and the key ring; Redis is never used.
    container = Container(settings, redis_url=settings.redis_url or "redis://127.0.0.1:0")
    try:
        sweep = container.retention
        report = await (sweep.dry_run() if args.dry_run else sweep.sweep())
        _print({"dry_run": report.dry_run, "counts": report.counts, "failed": list(report.failed)})
        return 1 if report.failed else 0
    finally:
        await container.close()


# -- end retention --


def _add_operator_commands(sub: Any) -> None:
    operators = sub.add_parser(
        "operators", help="operator roles of accounts (review: the reviewers)"
    ).add_subparsers(dest="action", required=True)
    for action, text in (("grant", "give ROLE to the account"), ("revoke", "take ROLE away")):
        command = operators.add_parser(action, help=text)
        command.add_argument("login_name")
        command.add_argument("role", choices=sorted(OPERATOR_ROLES))
    listing = operators.add_parser("list", help="accounts holding ROLE")
    listing.add_argument("role", choices=sorted(OPERATOR_ROLES), nargs="?", default=REVIEW_ROLE)


def _add_health_command(sub: Any) -> None:
    health = sub.add_parser(
        "health", help="ask the running server's gRPC health service; exit 0 when SERVING"
    )
    health.add_argument("--target", default="", help="host:port (default: the listen address)")
    health.add_argument("--service", default="", help="a service name (default: the server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.add_argument("--ca-file", default="", help="TLS: CA that signed the server's cert")
    health.add_argument("--server-name", default="", help="TLS: name the certificate carries")
    health.add_argument("--cert-file", default="", help="mTLS: this probe's certificate")
    health.add_argument("--key-file", default="", help="mTLS: this probe's private key")


def _health(args: argparse.Namespace, settings: Settings) -> int:
    from xiaohe.identity.server.probe import ProbeTls, check

    tls = ProbeTls(args.ca_file, args.server_name, args.cert_file, args.key_file)
    try:
        status, line = check(
            settings, target=args.target, service=args.service, timeout=args.timeout, tls=tls
        )
    except OSError as exc:
        print(f"xiaohe-identity: health: {exc}", file=sys.stderr)
        return 1
    print(line)
    return status


# -- delivery (issue 10) --


def _add_delivery_commands(sub: Any) -> None:
    delivery = sub.add_parser("delivery", help="message deliveries").add_subparsers(
        dest="action", required=True
    )
    show = delivery.add_parser("show", help="one message's lifecycle (never its text)")
    show.add_argument("message_id")
    stats = delivery.add_parser("stats", help="delivery ratio and receipt latency, from SQL")
    stats.add_argument(
        "--window", default="24h", help="how far back: seconds, or with s/m/h/d (default 24h)"
    )
    stats.add_argument("--by", choices=("provider", "prefix"), default="provider")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _window_seconds(text: str) -> float | None:
    """Seconds of "90", "15m", "24h", "7d"; None when unreadable or not positive."""
    unit = _UNITS.get(text[-1:].lower(), 0)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        return None
    return value if value > 0 else None


def _when(epoch_seconds: float | None) -> str | None:
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat()


async def _delivery(args: argparse.Namespace, settings: Settings) -> int:
    window = _window_seconds(args.window) if args.action == "stats" else 0.0
    if window is None:
        print(f"xiaohe-identity: --window: cannot read {args.window!r}", file=sys.stderr)
        return 2

    async def work(database: Database) -> int:
        log = DeliveryLog(database, SystemClock())
        if args.action == "show":
            record = await log.get(args.message_id)
            shown = dataclasses.asdict(record)
            for name in ("created_at", "sent_at", "done_at", "reported_at"):
                shown[name] = _when(shown[name])
            _print(shown)
            return 0
        _print(
            [
                {
                    args.by: s.key,
                    "sent": s.sent,
                    "delivered": s.delivered,
                    "failed": s.failed,
                    "unknown": s.unknown,
                    "no_receipt": s.no_receipt,
                    "delivery_ratio": s.delivery_ratio,
                    "median_latency_seconds": s.median_latency_seconds,
                }
                for s in await log.stats(window, args.by)
            ]
        )
        return 0

    return await _with_database(settings, work)


# -- end delivery --


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[int]]) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = settings.effective_database_url
    await upgrade_async(url, lock_file=settings.data_dir / ".migrate.lock")
    database = Database.from_url(url)
    try:
        return await work(database)
    finally:
        await database.close()


async def _clients(args: argparse.Namespace, settings: Settings) -> int:
    async def work(database: Database) -> int:
        registry = ClientRegistry(database, SystemClock())
        if args.action == "create":
            client, secret = await registry.create(args.name, args.grant)
            _print(
                {
                    "client_id": client.client_id,
                    "client_secret": secret,
                    "grants": sorted(client.grants),
                }
            )
        elif args.action == "list":
            _print(
                [
                    {
                        "client_id": c.client_id,
                        "name": c.name,
                        "grants": sorted(c.grants),
                        "revoked": c.revoked,
                    }
                    for c in await registry.list_all()
                ]
            )
        elif args.action == "grants":
            audit = AuditLog(
                database, SystemClock(), open_keyring(settings, SystemClock()).audit_keys
            )
            async with database.begin():
                client = await registry.set_grants(args.client_id, args.grant)
                await audit.record("client.grants", client.client_id, "ok")
            _print({"client_id": client.client_id, "grants": sorted(client.grants)})
        else:
            client = await registry.revoke(args.client_id)
            _print({"client_id": client.client_id, "revoked": client.revoked})
        return 0

    return await _with_database(settings, work)


async def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    anchor = None
    if args.anchor_seq is not None or args.anchor_mac is not None:
        try:
            anchor = ChainAnchor.parse(args.anchor_seq or 0, args.anchor_mac or "")
        except InvalidArgument as exc:
            for v in exc.violations:
                print(
                    f"xiaohe-identity: --{v.field.replace('.', '-')}: {v.description}",
                    file=sys.stderr,
                )
            return 2
    keys = open_keyring(settings, SystemClock()).audit_keys

    async def work(database: Database) -> int:
        report = await AuditLog(database, SystemClock(), keys).verify_chain(anchor)
        _print(dataclasses.asdict(report))
        return 0 if report.intact else 1

    return await _with_database(settings, work)


async def _policy_publish(text: str, settings: Settings, *, notify_only: bool = False) -> int:
    async def work(database: Database) -> int:
        store = PolicyStore(database, SystemClock())
        await store.ensure_seeded()
        published = await store.publish(text, purposes_changed=not notify_only)
        _print(
            {
                "version": published.version,
                "sha256": published.sha256,
                "purposes_changed": published.purposes_changed,
            }
        )
        return 0

    return await _with_database(settings, work)


# --- SMS-pumping prefix blocks -------------------------------------------------------


def _block_json(block: PrefixBlock) -> dict[str, Any]:
    return {
        "prefix": block.prefix,
        "reason": block.reason,
        "blocked_at": datetime.fromtimestamp(block.blocked_at, UTC).isoformat(),
        "until": datetime.fromtimestamp(block.until, UTC).isoformat(),
        "sent": block.sent,
        "verified": block.verified,
        "failed": block.failed,
    }


async def _pumping(args: argparse.Namespace, settings: Settings) -> int:
    """List or lift prefix blocks in the server's Redis (the embedded one must be running)."""
    redis_url = settings.redis_url or EmbeddedRedis(settings.data_dir / "redis").url
    container = Container(settings, redis_url=redis_url)
    try:
        watch = container.prefix_watch
        if args.action == "list":
            _print([_block_json(b) for b in await watch.list_blocks()])
            return 0
        lifted = await watch.lift(args.prefix)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await upgrade_async(settings.effective_database_url)
        outcome = "ok" if lifted else "none"
        await record_quietly(container.audit, "pumping.lift", args.prefix.strip(), outcome, log)
        _print({"prefix": args.prefix.strip(), "lifted": lifted})
        return 0
    finally:
        await container.close()


async def _operators(args: argparse.Namespace, settings: Settings) -> int:
    """Grant, revoke or list an operator role; grants and revocations are audited."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    await upgrade_async(settings.effective_database_url)
    # Roles touch only SQL and the key ring (login names' blind index); Redis is never used.
    container = Container(settings, redis_url=settings.redis_url or "redis://127.0.0.1:0")
    try:
        roles, accounts = container.operator_roles, container.accounts
        if args.action == "list":
            holders = await roles.holders(args.role)
            listed = []
            for holder in holders:
                credentials = await accounts.get_credentials(holder.account_id)
                listed.append(
                    {
                        "login_name": credentials.login_name,
                        "account_id": holder.account_id,
                        "role": holder.role,
                        "granted_at": _when(holder.granted_at),
                    }
                )
            _print(listed)
            return 0
        try:
            login_name = normalize_login_name(args.login_name)
        except InvalidArgument:
            login_name = ""
        found = await accounts.find_credentials(IdentifierKind.LOGIN_NAME, login_name)
        if found is None:
            print("xiaohe-identity: no account has that login name", file=sys.stderr)
            return 1
        if args.action == "grant" and not await container.totp.is_enrolled(found.account_id):
            # Operators sign in with password and TOTP (SECURITY P5): no role without it.
            print(
                "xiaohe-identity: the account has no confirmed TOTP second factor; it must "
                "enrol (AccountService.EnrollTotp, ConfirmTotp) before it can hold a role",
                file=sys.stderr,
            )
            return 1
        action = f"operator.role.{args.action}"
        async with container.database.begin():
            if args.action == "grant":
                changed = await roles.grant(found.account_id, args.role)
            else:
                changed = await roles.revoke(found.account_id, args.role)
            await container.audit.record(
                action, found.account_id, args.role if changed else "unchanged"
            )
        _print({"account_id": found.account_id, "role": args.role, "changed": changed})
        return 0
    finally:
        await container.close()


# -- issue 14: deactivation --


def _add_deactivation_commands(sub: Any) -> None:
    deactivation = sub.add_parser(
        "deactivation", help="account deactivations (注销) after their cooling-off period"
    ).add_subparsers(dest="action", required=True)
    deactivation.add_parser(
        "complete",
        help="complete now every deactivation whose cooling-off period has ended (the server"
        " does it on its own every deactivation_sweep_seconds)",
    )


async def _deactivation(settings: Settings) -> int:
    """Complete the due deactivations (the server's Redis holds their pending keys)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    await upgrade_async(settings.effective_database_url)
    redis_url = settings.redis_url or EmbeddedRedis(settings.data_dir / "redis").url
    container = Container(settings, redis_url=redis_url)
    try:
        completed = await container.deactivation.complete_due()
        _print({"deactivations_completed": completed})
        return 0
    finally:
        await container.close()


# -- end deactivation --


async def _rewrap(settings: Settings) -> int:
    """Re-wrap every account's data key under the active master key; data stays as it is."""
    await upgrade_async(settings.effective_database_url)
    # Re-wrapping touches only SQL and the key ring; the Redis URL is never connected to.
    container = Container(settings, redis_url=settings.redis_url or "redis://127.0.0.1:0")
    try:
        return await container.accounts.rewrap_data_keys()
    finally:
        await container.close()


# -- issue 14: rights requests --


def _add_requests_commands(sub: Any) -> None:
    requests = sub.add_parser(
        "requests", help="rights requests (PIPL) and their due dates"
    ).add_subparsers(dest="action", required=True)
    listing = requests.add_parser(
        "list", help="requests soonest due first (never their texts); JSON on stdout"
    )
    listing.add_argument(
        "--overdue", action="store_true", help="only open requests past their due date"
    )
    listing.add_argument("--state", choices=("open", "resolved"), help="only this state")


async def _requests(args: argparse.Namespace, settings: Settings) -> int:
    """List rights requests by due date, every page; texts stay out of the terminal."""
    await upgrade_async(settings.effective_database_url)
    # Listing touches only SQL and the key ring; the Redis URL is never connected to.
    container = Container(settings, redis_url=settings.redis_url or "redis://127.0.0.1:0")
    try:
        flow = container.rights_requests
        state = None if args.state is None else RequestState(args.state)
        listed: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await flow.queue(
                state=state, overdue_only=args.overdue, page_size=100, page_token=token
            )
            listed.extend(
                {
                    "request_id": r.request_id,
                    "account_id": r.account_id,
                    "kind": r.kind.value,
                    "state": r.state.value,
                    "filed_at": _when(r.filed_at),
                    "due_date": r.due_on.isoformat(),
                    "overdue": flow.is_overdue(r),
                    "outcome": r.outcome.value if r.outcome is not None else None,
                    "resolved_at": _when(r.resolved_at),
                }
                for r in page.requests
            )
            token = page.next_page_token
            if not token:
                break
        _print(listed)
        return 0
    finally:
        await container.close()


# -- end rights requests --


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(config_file=args.config)
        if args.command == "serve" and args.workers is not None:
            if args.workers < 1:
                raise SettingsError("--workers: must be at least 1")
            settings = dataclasses.replace(settings, workers=args.workers)
    except SettingsError as exc:
        print(f"xiaohe-identity: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, file=settings.log_file, access_log=settings.access_log)
    if args.command != "migrate":
        # Schema upgrades are routine for every other command; only `migrate` narrates them.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    os.umask(0o077)  # files the server or the CLI creates are the owner's alone
    try:
        if args.command == "serve":
            from xiaohe.identity.server.ownership import AlreadyInUse
            from xiaohe.identity.server.supervisor import serve

            try:
                return asyncio.run(serve(settings))
            except AlreadyInUse as exc:
                print(f"xiaohe-identity: {exc}", file=sys.stderr)
                return 1
        if args.command == "health":
            return _health(args, settings)
        if args.command == "migrate":
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            asyncio.run(upgrade_async(settings.effective_database_url))
            print("database is up to date")
            return 0
        if args.command == "clients":
            return asyncio.run(_clients(args, settings))
        if args.command == "audit":
            return asyncio.run(_audit_verify(args, settings))
        if args.command == "delivery":
            return asyncio.run(_delivery(args, settings))
        if args.command == "policy":
            try:
                text = Path(args.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                print(f"xiaohe-identity: cannot read {args.file}: {exc}", file=sys.stderr)
                return 1
            return asyncio.run(_policy_publish(text, settings, notify_only=args.notify_only))
        if args.command == "pumping":
            return asyncio.run(_pumping(args, settings))
        if args.command == "operators":
            return asyncio.run(_operators(args, settings))
        if args.command == "retention":  # -- issue 14: retention --
            return asyncio.run(_retention(args, settings))

        if args.command == "requests":  # issue 14: rights requests
            return asyncio.run(_requests(args, settings))

        if args.command == "deactivation":  # issue 14: deactivation
            return asyncio.run(_deactivation(settings))
        if args.command == "keys":
            if args.action == "init":
                created = KeyRing.create(settings.effective_keyring_file, SystemClock())
                _print({"keyring_file": str(created.path)})
                return 0
            ring = open_keyring(settings, SystemClock())
            if args.action == "rotate" and args.no_rewrap:
                staged = ring.rotate_master_key(activate=False)
                _print(
                    {"staged_master_key": staged.id, "active_master_key": ring.active_master_key.id}
                )
            elif args.action == "rotate":
                # The database must answer before the ring changes, or a failed re-wrap
                # would leave a rotated ring behind for an operator to rotate again.
                asyncio.run(upgrade_async(settings.effective_database_url))
                key = ring.rotate_master_key()
                rewrapped = asyncio.run(_rewrap(settings))
                _print({"active_master_key": key.id, "data_keys_rewrapped": rewrapped})
            elif args.action == "rewrap":
                asyncio.run(upgrade_async(settings.effective_database_url))  # answers first
                ring.activate_newest_master_key()  # a staged key, if `rotate --no-rewrap` made one
                rewrapped = asyncio.run(_rewrap(settings))
                active = ring.active_master_key.id
                _print({"active_master_key": active, "data_keys_rewrapped": rewrapped})
            else:
                keep = settings.access_token_ttl_seconds + 3600
                if args.stage:
                    staged_key = ring.rotate_signing_key(keep_retired_for=keep, activate=False)
                    _print(
                        {
                            "staged_signing_key": staged_key.kid,
                            "active_signing_key": ring.active_signing_key.kid,
                        }
                    )
                else:
                    signing = ring.rotate_signing_key(keep_retired_for=keep)
                    _print({"active_signing_key": signing.kid})
            return 0
    except IdentityError as exc:
        print(f"xiaohe-identity: {exc.message}", file=sys.stderr)
        return 1
    except KeyRingError as exc:
        print(f"xiaohe-identity: {exc}", file=sys.stderr)
        return 2
    except MetricsListenError as exc:
        print(f"xiaohe-identity: {ENV_PREFIX}METRICS_LISTEN: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        # Never the URL (it may hold a password): the driver's error name says what failed.
        print(
            f"xiaohe-identity: the database refused or did not answer "
            f"({type(exc.orig).__name__}); check {ENV_PREFIX}DATABASE_URL",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # a directory, a file or a store this command could not reach
        where = f": {exc.filename}" if exc.filename else ""
        print(f"xiaohe-identity: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
