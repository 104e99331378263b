"""The API served to tests as production serves it (through `GuardedRunner`), on aiohttp's test
server: kept here so that the production modules never import aiohttp's test utilities."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from config.settings import WebSettings
from web.server import GuardedRunner


class GuardedTestServer(TestServer):
    """aiohttp's `TestServer` serving through `GuardedRunner`, as production does."""

    def __init__(self, app: web.Application, web_settings: WebSettings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._web_settings = web_settings

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs.pop("handler_cancellation", None)  # production does not cancel handlers either
        return GuardedRunner(self.app, self._web_settings, **kwargs)
