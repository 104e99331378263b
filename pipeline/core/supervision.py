"""A process's long-running background tasks, in one task group that readiness can see into.

The API process runs the in-process consumer and the queue-depth sampler beside serving
requests. They live in one `asyncio.TaskGroup`, run by a task of its own (aiohttp starts and
stops an app from different tasks, so the group cannot belong to either): if one of them dies,
the group stops the others, the failure is kept, and `/health/ready` answers 503 naming it, so
an orchestrator replaces a process that still answers HTTP but no longer works. Every task is
awaited on shutdown; nothing is left running or swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    """Start with `start()`, add tasks with `spawn()`, end with `stop()`; `failure` says what died."""

    def __init__(self) -> None:
        self.failure: str | None = None
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._endless: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(started), name="supervisor")
        await started

    async def _run(self, started: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                started.set_result(None)
                await self._stopping.wait()
                for task in self._endless:  # samplers and the like run until told to stop
                    task.cancel()
        except Exception as exc:  # an ExceptionGroup of what died: keep it for readiness
            causes = exc.exceptions if isinstance(exc, ExceptionGroup) else [exc]
            self.failure = "; ".join(f"{type(e).__name__}: {e}" for e in causes)[:500]
            log.error("a background task died, readiness now fails error=%s", self.failure)
        finally:
            self._group = None
            if not started.done():
                started.set_result(None)

    def spawn(
        self, name: str, coroutine: Coroutine[Any, Any, Any], *, endless: bool = False
    ) -> asyncio.Task[Any]:
        """Run `coroutine` in the group; `endless` ones are cancelled by `stop()`, the others are
        expected to return once their owner tells them to (a consumer drains first)."""
        if self._group is None:
            coroutine.close()
            raise RuntimeError(f"cannot start {name}: background tasks are stopped ({self.failure})")
        task = self._group.create_task(coroutine, name=name)
        if endless:
            self._endless.append(task)
        return task

    async def stop(self) -> None:
        """Cancel the endless tasks and wait for every task to end."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner
