"""Run an entry point's main coroutine, on uvloop when it is installed and not switched off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pipeline.core import memory

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True, debug: bool = False) -> T:
    """`asyncio.run` with uvloop's faster event loop where available (Linux and macOS wheels).

    `debug` turns on asyncio's debug mode with a 100 ms slow-callback threshold: every callback
    that holds the loop longer is logged (`Executing ... took ...`), to find blocking calls.
    """
    memory.keep_big_blocks_mapped()
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:  # optional: the standard loop is correct, only slower
            log.debug("uvloop not installed, using the standard event loop")
    with asyncio.Runner(loop_factory=factory, debug=debug or None) as runner:
        if debug:
            runner.get_loop().slow_callback_duration = 0.1
        return runner.run(main)
