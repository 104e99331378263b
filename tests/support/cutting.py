"""A TCP proxy on 127.0.0.1 that drops connections mid-request, as a flaky network does: each
connection that has carried more than `after` bytes from client to server is cut (both sides
closed at once, the request half sent) until `cuts` connections have been; the rest pass.
`pace`: seconds each 64 KiB waits on its way up (a slow link, so a test can act mid-upload)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class CuttingProxy:
    target: str  # http://host:port
    cuts: int = 3
    after: int = 2 * 1024 * 1024
    pace: float = 0.0
    cut: int = 0
    #: Bytes that went from clients to the target, over every connection.
    sent: int = 0
    port: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        parts = urlsplit(self.target)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(parts.hostname, parts.port)
        except OSError:
            client_writer.close()
            return
        carried = 0

        def close() -> None:
            for writer in (client_writer, upstream_writer):
                writer.transport.abort()

        async def pump_up() -> None:
            nonlocal carried
            while chunk := await client_reader.read(64 * 1024):
                carried += len(chunk)
                self.sent += len(chunk)
                if carried > self.after and self.cut < self.cuts:
                    self.cut += 1
                    close()
                    return
                if self.pace:
                    await asyncio.sleep(self.pace)
                upstream_writer.write(chunk)
                await upstream_writer.drain()
            upstream_writer.write_eof()

        async def pump_down() -> None:
            while chunk := await upstream_reader.read(64 * 1024):
                client_writer.write(chunk)
                await client_writer.drain()
            close()

        with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
            await asyncio.gather(pump_up(), pump_down())
        close()


@contextlib.asynccontextmanager
async def cutting_proxy(
    target: str, cuts: int = 3, after: int = 2 * 1024 * 1024, pace: float = 0.0
) -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy(target, cuts, after, pace)
    server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    proxy._server = server
    async with server:
        yield proxy
        server.close()
