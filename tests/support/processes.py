"""Child processes of the tests: their environment, and starting, running and stopping them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config.settings import Settings
from tests.support.settings import ROOT


def process_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child process: no AWS profile of the machine, fast polling."""
    return {
        "PATH": os.environ["PATH"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1",
        "IMGSVC_CONSUMER_WORKERS": "1",
        "IMGSVC_METRICS_PORT": "0",
        "IMGSVC_ADMIN_PORT": "0",
        "IMGSVC_WORKERS": "1",  # one process, consumer included, unless a test asks for more
        "IMGSVC_LOG_FORMAT": "text",
        **extra,
    }


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process use `settings`' endpoint and resources."""
    aws = settings.aws
    assert aws.endpoint_url is not None
    return process_env(
        AWS_ENDPOINT_URL=aws.endpoint_url,
        IMGSVC_MODE="embedded",
        IMGSVC_SOURCE_BUCKET=aws.source_bucket,
        IMGSVC_DEST_BUCKET=aws.dest_bucket,
        IMGSVC_QUEUE_NAME=aws.queue_name,
        IMGSVC_DLQ_NAME=aws.dlq_name,
        IMGSVC_OUTBOX_NAME=aws.outbox_name,
        IMGSVC_OUTBOX_DLQ_NAME=aws.outbox_dlq_name,
        IMGSVC_TABLE_PREFIX=aws.table_prefix,
        IMGSVC_CONSUMER_VISIBILITY_TIMEOUT=str(settings.consumer.visibility_timeout),
        **extra,
    )


async def start(*args: str, env: dict[str, str], stdout: int = subprocess.PIPE) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE
    )


@asynccontextmanager
async def running(
    *args: str, env: dict[str, str], stdout: int = subprocess.PIPE
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that is killed if the test leaves it running."""
    process = await start(*args, env=env, stdout=stdout)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stops_cleanly(process: asyncio.subprocess.Process, timeout: float = 30) -> bool:
    """SIGTERM the process; True when it exits 0 within `timeout`."""
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(timeout):
        return await process.wait() == 0


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=process_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
