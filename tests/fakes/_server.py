"""A small aiohttp server on 127.0.0.1:0 that the platform fakes build on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalServer:
    """Serves one handler on every path of a free loopback port until `close()`."""

    def __init__(self, handler: Handler) -> None:
        self._app = web.Application()
        self._app.router.add_route("*", "/{tail:.*}", handler)
        self._runner = web.AppRunner(self._app, access_log=None)
        self.url = ""
        self.release = asyncio.Event()
        """Set to let requests held by a "hang" scenario finish (close() sets it)."""

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self.release.set()
        await self._runner.cleanup()


async def post_json(url: str, document: object) -> tuple[int, str]:
    """POST a JSON document the way a platform pushes receipts; (status, body text)."""
    async with aiohttp.ClientSession() as session, session.post(url, json=document) as response:
        return response.status, await response.text()
