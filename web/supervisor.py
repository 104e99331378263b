"""`python -m web --workers N`: N serving processes on one port, under one supervisor.

One process serves from one core. The supervisor binds the API's and the admin listener's
sockets once and hands them to N worker processes (`python -m web --serve-fds`), which accept
from the same listening sockets (the kernel hands each new connection to one of them); it starts
the consumer once, as a process of its own, and the embedded endpoint once (its caller). A worker
or the consumer that dies is started again (after a pause that grows if it keeps dying); SIGTERM
or SIGINT is passed on to every child, which drain as they do alone, and what has not exited
after the drain time is killed. The children die with the supervisor, even by SIGKILL (Linux).

Nothing is shared in memory between the workers: each has its own connections, caps and shares
(so N workers admit N times a process's bounds), its own variant workers, its own key cache. A
long poll is woken in-process only by a change made in its own worker; otherwise it re-reads
once a second, as across machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from web.notify import notify

log = logging.getLogger(__name__)
#: Seconds a child must have run to count as started well (its restart pause starts over).
STABLE_SECONDS = 30.0
#: The longest pause before a child that keeps dying is started again (s).
MOST_PAUSE = 30.0


@dataclass
class Child:
    """One process the supervisor keeps running."""

    name: str
    args: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0
    restarts: int = field(default=0)

    async def start(self) -> None:
        self.started = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, env=self.env, pass_fds=self.pass_fds
        )
        log.info("started %s pid=%d", self.name, self.process.pid)


class Supervisor:
    """Runs the children until SIGTERM or SIGINT, starting again any that dies."""

    def __init__(
        self, children: list[Child], drain_seconds: float, on_started: Callable[[], object] = lambda: None
    ) -> None:
        self.children = children
        self._drain = drain_seconds
        self._on_started = on_started
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        for child in self.children:
            await child.start()
        watching = [asyncio.create_task(self._watch(child)) for child in self.children]
        self._on_started()
        await self._stopping.wait()
        notify("STOPPING=1")
        log.info("shutting down: passing the signal on to %d processes", len(self.children))
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        await self._stop_all()
        return 0

    async def _watch(self, child: Child) -> None:
        while not self._stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - child.started
            child.failures = 0 if ran > STABLE_SECONDS else child.failures + 1
            pause = min(MOST_PAUSE, 0.5 * 2**child.failures) if child.failures else 0.0
            log.warning(
                "%s exited code=%s after %.1fs; starting it again in %.1fs", child.name, code, ran, pause
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            if self._stopping.is_set():
                return
            child.restarts += 1
            await child.start()

    async def _stop_all(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self._drain)
            for process in running:
                if process.returncode is None:
                    log.warning("pid=%d did not stop within %.0fs: killed", process.pid, self._drain)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket the workers inherit (`OSError` if the address is taken)."""
    sock = socket.create_server((host, port), backlog=1024, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def address_of(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def worker_env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    return {**base, **overrides}


def inherited(fds: str) -> tuple[socket.socket, socket.socket]:
    """The API's and the admin listener's sockets a worker was handed (`--serve-fds API,ADMIN`)."""
    api, admin = (int(fd) for fd in fds.split(","))
    return socket.socket(fileno=api), socket.socket(fileno=admin)


def default_workers() -> int:
    from config.settings import usable_cpus

    return usable_cpus()


def pid() -> int:
    return os.getpid()
