"""`python -m clients.examples.workbench --identity HOST:PORT --listen HOST:PORT`.

Runs the example workbench service until SIGINT or SIGTERM. Its own API client
(grant `validate`: signing keys and the revocation feed) comes from
`XIAOHE_WORKBENCH_CLIENT_ID` / `XIAOHE_WORKBENCH_CLIENT_SECRET`, or from
`--client-file` (the JSON `xiaohe-identity clients create` prints). Once serving it
prints `workbench serving on HOST:PORT` (the port actually bound, for `--listen
127.0.0.1:0`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import grpc

from clients.examples.workbench.service import start_workbench
from xiaohe.identity.client import IdentityClient

CLIENT_ID_ENV = "XIAOHE_WORKBENCH_CLIENT_ID"
CLIENT_SECRET_ENV = "XIAOHE_WORKBENCH_CLIENT_SECRET"  # noqa: S105 - a variable's name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.examples.workbench")
    parser.add_argument("--identity", required=True, help="the identity service, HOST:PORT")
    parser.add_argument("--identity-ca", type=Path, help="CA bundle: reach the service over TLS")
    parser.add_argument("--listen", default="127.0.0.1:50061", help="where to serve, HOST:PORT")
    parser.add_argument("--audience", default="workbench", help="the audience tokens must have")
    parser.add_argument("--issuer", default=None, help="the issuer tokens must have (optional)")
    parser.add_argument("--client-file", type=Path, help="JSON with client_id and client_secret")
    parser.add_argument(
        "--require-auth-method",
        action="append",
        default=[],
        metavar="AMR",
        help="refuse sessions that did not use this method (e.g. otp); repeatable",
    )
    parser.add_argument("--min-real-name-level", type=int, default=0)
    parser.add_argument(
        "--max-staleness",
        type=float,
        default=15.0,
        help="seconds without a word from the revocation feed before calls are refused",
    )
    return parser


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    if args.client_file is not None:
        saved = json.loads(args.client_file.read_text())
        return str(saved["client_id"]), str(saved["client_secret"])
    client_id, secret = os.environ.get(CLIENT_ID_ENV), os.environ.get(CLIENT_SECRET_ENV)
    if not client_id or not secret:
        raise SystemExit(f"set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}, or pass --client-file")
    return client_id, secret


async def _run(args: argparse.Namespace) -> None:
    client_id, secret = _credentials(args)
    channel_credentials = None
    if args.identity_ca is not None:
        channel_credentials = grpc.ssl_channel_credentials(args.identity_ca.read_bytes())
    async with IdentityClient(
        args.identity,
        client_id=client_id,
        client_secret=secret,
        credentials=channel_credentials,
    ) as identity:
        running = await start_workbench(
            identity,
            listen=args.listen,
            audience=args.audience,
            issuer=args.issuer,
            required_auth_methods=args.require_auth_method,
            min_real_name_level=args.min_real_name_level,
            max_staleness=args.max_staleness,
        )
        host = args.listen.rpartition(":")[0]
        print(f"workbench serving on {host}:{running.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, running.follower}, return_when=asyncio.FIRST_COMPLETED)
        if running.follower.done() and not running.follower.cancelled():
            error = running.follower.exception()
            print(f"revocation feed lost for good: {error!r}", file=sys.stderr, flush=True)
        await running.stop()


def main() -> None:
    """Parse the arguments and serve until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_run(_parser().parse_args()))


if __name__ == "__main__":
    main()
