"""A webhook receiver on 127.0.0.1 for the tests: answers as told and remembers every call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers with `statuses` in turn (200 when they run out)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    hold: asyncio.Event | None = None  # when set, every request waits for it (but the first `unheld`)
    unheld: int = 0
    calls: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    #: The event id and status of every answer given (a held request has none until released).
    answers: list[tuple[str, int]] = field(default_factory=list)
    waiting: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((time.monotonic(), dict(request.headers), body))
        if self.hold is not None and len(self.calls) > self.unheld:
            self.waiting += 1
            try:
                await self.hold.wait()
            finally:
                self.waiting -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        self.answers.append((request.headers.get("Imgsvc-Event-Id", ""), status))
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = str(server.make_url("/hook"))
    try:
        yield found
    finally:
        if found.hold is not None:
            found.hold.set()
        await server.close()
