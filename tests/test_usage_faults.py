"""The usage counters stay equal to what the records add up to, whatever step of an upload or a
delete fails: a fault is injected before, then after, each storage and table call the request
makes, one at a time, on both backends, and `reconcile_usage` finds no drift afterwards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.core.errors import DatabaseUnavailable
from pipeline.core.usage import reconcile_usage
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.images import jpeg_bytes
from tests.support.settings import USER
from web.keys import STORAGE, TABLES

STORAGE_CALLS = ("upload_stream", "etag_of", "delete_many", "put", "read")
TABLE_CALLS = ("get", "put", "update", "delete", "transact", "query")


class Faults:
    """Counts the calls made through the wrapped methods; fails the `fail_at`-th one, before it
    does anything or (`after`) once it has done its work, as a crash or a lost answer would."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_at: int | None = None
        self.after = False

    def wrap(self, monkeypatch: pytest.MonkeyPatch, target: Any, name: str, label: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(target, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            index = len(self.calls)
            self.calls.append(f"{label}.{name}")
            if index == self.fail_at and not self.after:
                raise DatabaseUnavailable("injected before the call")
            result = await original(*args, **kwargs)
            if index == self.fail_at and self.after:
                raise DatabaseUnavailable("injected after the call")
            return result

        monkeypatch.setattr(target, name, call)

    def arm(self, index: int | None, after: bool = False) -> None:
        self.calls, self.fail_at, self.after = [], index, after


async def no_drift(backend: Backend) -> None:
    report = await reconcile_usage(backend.tables, dry_run=True)
    assert [d for d in report.drifted if d.user_id == USER] == []


async def test_no_step_of_an_upload_or_delete_can_leave_the_counters_off(
    backend: Backend, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await make_client(backend.settings)
    app = api.server.app
    faults = Faults()
    for name in STORAGE_CALLS:
        faults.wrap(monkeypatch, app[STORAGE], name, "storage")
    for role in ("images", "users"):
        for name in TABLE_CALLS:
            faults.wrap(monkeypatch, getattr(app[TABLES], role), name, role)

    async def upload(image_id: str, size: int) -> int:
        response = await api.put(f"/images/{image_id}", data=jpeg_bytes(size, size))
        body = await response.json()  # every answer, the injected failures' too, is JSON
        assert response.status in (202, 503), body
        return response.status

    # A clean run of each request counts its steps.
    faults.arm(None)
    assert await upload("clean", 40) == 202
    upload_steps = list(faults.calls)
    faults.arm(None)
    assert await upload("clean", 48) == 202  # a replacement: more steps
    replace_steps = list(faults.calls)
    faults.arm(None)
    assert (await api.delete("/images/clean")).status == 204
    delete_steps = list(faults.calls)
    assert "images.transact" in upload_steps and "images.transact" in delete_steps

    for after in (False, True):
        for step in range(len(upload_steps)):
            faults.arm(step, after)
            await upload(f"new-{step}-{after}", 32)
            faults.arm(None)
            await no_drift(backend)
        for step in range(len(replace_steps)):
            faults.arm(None)
            assert await upload(f"old-{step}-{after}", 24) == 202
            faults.arm(step, after)
            await upload(f"old-{step}-{after}", 36)
            faults.arm(None)
            await no_drift(backend)
        for step in range(len(delete_steps)):
            faults.arm(None)
            assert await upload(f"gone-{step}-{after}", 28) == 202
            faults.arm(step, after)
            response = await api.delete(f"/images/gone-{step}-{after}")
            assert response.status in (204, 503)
            faults.arm(None)
            await no_drift(backend)
            assert (await api.delete(f"/images/gone-{step}-{after}")).status == 204  # a retry completes
            await no_drift(backend)
