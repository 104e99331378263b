"""Faults injected at the ports, on either backend: a port whose chosen calls fail while the
test says so (what deleting a moto bucket under the service used to stand in for, on AWS only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.core.errors import ServiceError
from pipeline.core.ports import Backend


class Failing:
    """A port whose calls named in `methods` raise `error()` while `failing` is true; every other
    call, and every call once `failing` is false, is the port's own. `calls` counts the refused."""

    def __init__(self, methods: set[str], error: Callable[[], ServiceError]) -> None:
        self._port: Any = None
        self._methods = methods
        self._error = error
        self.failing = True
        self.calls = 0

    def storage_of(self, ports: Backend) -> Backend:
        """`ports` with this around its object store (`tests.support.consumers.consumer_on(wrap=...)`)."""
        self._port = ports.storage
        return dataclasses.replace(ports, storage=self)

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._port, name)
        if name not in self._methods:
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.failing:
                self.calls += 1
                raise self._error()
            result: Awaitable[Any] = real(*args, **kwargs)
            return await result

        return call
