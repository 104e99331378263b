"""Start the service's own processes on 127.0.0.1 for the scripts: endpoint, API, consumers.

The embedded AWS endpoint (`python -m web --embedded-only`), the API and each consumer run in
processes of their own, as they would in a deployment, so a script measures or exercises the
real entry points.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.demo import read_demo_keys

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env(endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: embedded mode, no in-process consumer, no machine AWS profile."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "IMGSVC_MODE": "embedded",
        "IMGSVC_RUN_CONSUMER": "false",
        "IMGSVC_LOG_LEVEL": "INFO",
        "IMGSVC_LOG_FORMAT": "text",  # the scripts read readiness lines from it
        "IMGSVC_METRICS_PORT": "0",  # many consumers on one machine: no shared metrics port
        "IMGSVC_ADMIN_PORT": "0",  # nor one admin port for many API processes
        "IMGSVC_WORKERS": "1",  # the scripts start as many API processes as they measure
        # Benchmarks drive the service as one client address and one user, on purpose: the
        # per-client and per-user shares (which `scripts/noisy_neighbour.py` measures) are off.
        "IMGSVC_MAX_CONNECTIONS_PER_CLIENT": "0",
        "IMGSVC_USER_UPLOAD_MEGAPIXELS_PER_SECOND": "0",
        "IMGSVC_USER_MAX_WAITS": "0",
        "IMGSVC_VARIANT_USER_MAX_PENDING": "10000",
        "IMGSVC_CONSUMER_USER_MAX_IN_FLIGHT": "10000",
        **extra,
    }
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


async def start(
    args: list[str],
    env: dict[str, str],
    ready: bytes,
    *,
    stdout: int = subprocess.DEVNULL,
    log: Callable[[bytes], None] | None = None,
    cpus: set[int] | None = None,
) -> asyncio.subprocess.Process:
    """Start `python ARGS` and return once its log says `ready`; its log is drained from then on
    (each line handed to `log`, when given). `cpus`: the only CPUs it and its children may run on
    (else this process's)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while not re.search(ready, line := await process.stderr.readline()):
            if not line:
                raise RuntimeError(f"{' '.join(args)} exited before it was ready")
    asyncio.create_task(_drain(process.stderr, log))  # noqa: RUF006 - lives as long as the process
    return process


async def _drain(stream: asyncio.StreamReader, log: Callable[[bytes], None] | None) -> None:
    while line := await stream.readline():
        if log is not None:
            log(line)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def start_endpoint(
    port: int, cpus: set[int] | None = None
) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    """`python -m web --embedded-only` on `port` (on `cpus` only, with its granian child), and
    the demo users' API keys it issued."""
    keys_file = Path(tempfile.mkdtemp(prefix="imgsvc-")) / "demo-keys.json"
    process = await start(
        ["-m", "web", "--embedded-only", "--embedded-port", str(port)],
        child_env(IMGSVC_DEMO_KEYS_FILE=str(keys_file)),
        rb"embedded AWS endpoint only",  # logged once provisioned and seeded
        cpus=cpus,
    )
    return process, read_demo_keys(keys_file)


def endpoint_apart() -> tuple[set[int], set[int]] | None:
    """CPUs for the embedded endpoint alone, and for everything else (this script, the API, the
    consumer), so that the endpoint's work does not compete with what is measured; None with
    fewer than two CPUs to split."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        return None
    return {mine[-1]}, set(mine[:-1])


@dataclass
class Stack:
    apis: list[str]
    endpoint: str
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # demo user id -> API key

    @property
    def api(self) -> str:
        return self.apis[0]

    async def stop(self) -> None:
        """SIGTERM everything, newest first (consumers and API before the endpoint they use)."""
        for process in reversed(self.processes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()


async def start_stack(webs: int = 1, *, pin: bool = False, **api_env: str) -> Stack:
    """The embedded AWS endpoint, provisioned, and `webs` API processes sharing it. `pin`: the
    endpoint on a CPU of its own and this process (so the APIs and consumers it starts later) on
    the others (`endpoint_apart`)."""
    embedded = free_port()
    endpoint = f"http://127.0.0.1:{embedded}"
    split = endpoint_apart() if pin else None
    if split is not None:
        os.sched_setaffinity(0, split[1])
    aws, keys = await start_endpoint(embedded, split[0] if split else None)
    stack = Stack([], endpoint, [aws], keys)
    for _ in range(webs):
        port = free_port()
        stack.processes.append(
            await start(["-m", "web", "--port", str(port)], child_env(endpoint, **api_env), rb"API listening")
        )
        stack.apis.append(f"http://127.0.0.1:{port}")
    return stack


async def start_consumer(
    endpoint: str, *, burst: bool = False, log: Callable[[bytes], None] | None = None, **extra: str
) -> asyncio.subprocess.Process:
    args = ["-m", "pipeline", "consumer", *(["--burst"] if burst else [])]
    return await start(
        args, child_env(endpoint, **extra), rb"consumer starting", stdout=subprocess.PIPE, log=log
    )


async def start_local(data_dir: Path, **extra: str) -> Stack:
    """`python -m web --data-dir DIR`: the API and its consumer on the local backend (files and
    SQLite, no AWS endpoint), one process, and the demo users' keys it wrote into DIR; `extra`:
    more of its environment (`IMGSVC_MEZZANINE="2048"`)."""
    port = free_port()
    env = child_env(IMGSVC_MODE="local", IMGSVC_RUN_CONSUMER="true", **extra)
    process = await start(
        ["-m", "web", "--data-dir", str(data_dir), "--port", str(port)], env, rb"API listening"
    )
    return Stack([f"http://127.0.0.1:{port}"], "", [process], read_demo_keys(data_dir / "demo-keys.json"))
