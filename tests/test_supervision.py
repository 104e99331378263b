"""Background tasks are supervised: one that dies stops its group and fails readiness, saying why."""

from __future__ import annotations

import asyncio
from typing import Any

from config.settings import Settings
from pipeline.core.supervision import Supervisor
from tests.support.clients import ClientFactory
from web.keys import BACKGROUND, CONSUMER


async def test_a_dead_task_stops_the_group_and_is_reported() -> None:
    supervisor = Supervisor()
    await supervisor.start()
    cancelled = asyncio.Event()

    async def sampler() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    async def broken() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("the deleter hit a bug")

    supervisor.spawn("sampler", sampler(), endless=True)
    supervisor.spawn("broken", broken())
    await asyncio.wait_for(cancelled.wait(), 5)  # the group took its sibling down with it
    await supervisor.stop()
    assert supervisor.failure == "RuntimeError: the deleter hit a bug"


async def test_stop_cancels_endless_tasks_and_awaits_the_rest() -> None:
    supervisor = Supervisor()
    await supervisor.start()
    finished = asyncio.Event()

    async def draining() -> None:
        await asyncio.sleep(0.2)
        finished.set()

    supervisor.spawn("sampler", asyncio.sleep(3600), endless=True)
    supervisor.spawn("consumer", draining())
    await supervisor.stop()
    assert finished.is_set() and supervisor.failure is None


async def test_readiness_fails_when_a_background_task_of_the_api_dies(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings: Settings = make_settings(IMGSVC_RUN_CONSUMER="true")
    api = await make_client(settings)
    assert (await api.get("/health/ready")).status == 200
    app = api.server.app
    assert app is not None and CONSUMER in app

    async def dies() -> None:
        raise ConnectionAbortedError("lost its way")

    app[BACKGROUND].spawn("doomed", dies())
    async with asyncio.timeout(5):
        while (response := await api.get("/health/ready")).status == 200:
            await asyncio.sleep(0.05)
    body = await response.json()
    assert response.status == 503 and body["error"] == "not_ready"
    assert "ConnectionAbortedError: lost its way" in body["message"]
    assert (await api.get("/health/live")).status == 200  # alive: the orchestrator decides
