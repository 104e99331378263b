"""Child processes of the tests: their environment, and starting, running and stopping them;
`WebProcess` is how a test runs `python -m web`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType

import aiohttp

from config.settings import Settings
from pipeline.core.demo import read_demo_keys
from tests.support.settings import ROOT, USER


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
        **{
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "IMGSVC_MODE": "embedded",
            "IMGSVC_SOURCE_BUCKET": aws.source_bucket,
            "IMGSVC_DEST_BUCKET": aws.dest_bucket,
            "IMGSVC_QUEUE_NAME": aws.queue_name,
            "IMGSVC_DLQ_NAME": aws.dlq_name,
            "IMGSVC_OUTBOX_NAME": aws.outbox_name,
            "IMGSVC_OUTBOX_DLQ_NAME": aws.outbox_dlq_name,
            "IMGSVC_TABLE_PREFIX": aws.table_prefix,
            "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": str(settings.consumer.visibility_timeout),
        }
        | extra
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


#: What `python -m web` logs as it starts (in either log format): the URLs of its API, its admin
#: listener and its embedded AWS endpoint.
API_URL = re.compile(r"API listening url=([^\s\",]+)")
ADMIN_URL = re.compile(r"admin listening url=([^\s\",]+)")
ENDPOINT_URL = re.compile(r"embedded AWS endpoint url=([^\s\",]+)")


def listening(web: WebProcess) -> bool:
    """`WebProcess`'s default readiness: the API and the admin listener have logged their URLs
    (the API must then answer `/health/live` too)."""
    return bool(web.found(API_URL) and web.found(ADMIN_URL))


class WebProcess:
    """`python -m web ARGS --port 0` as a child process of the test, its stdout and stderr in
    `log` (appended: a restart may keep one file; `text` and `lines` are this start's alone).

        async with WebProcess("--data-dir", str(tmp_path / "data"), log=tmp_path / "web.log") as web:
            async with aiohttp.ClientSession(web.url, headers=bearer(web.demo_key())) as session: ...
            assert await web.stop() == 0  # or leave it to the block's end

    Starting waits, for at most `start_timeout` seconds, until `ready(self)` holds (by default
    `listening`: both URLs logged) and then, once the log named the API's URL, until the API
    answers `/health/live`; it fails with the log if the process exits first. `ready=None` waits
    for nothing: for a start that must fail (`await web.exited()`, then `web.text`). The block's
    end stops the process as `stop` does, whatever happened in it, unless the test did.
    `env` is `process_env()` unless given; `preexec_fn` runs in the child before `python`."""

    def __init__(
        self,
        *args: str,
        log: Path,
        env: dict[str, str] | None = None,
        ready: Callable[[WebProcess], bool] | None = listening,
        start_timeout: float = 60,
        stop_timeout: float = 30,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.args = ("--port", "0", *args)
        self.log = log
        self.env = process_env() if env is None else env
        self.ready = ready
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.preexec_fn = preexec_fn
        self._process: asyncio.subprocess.Process | None = None
        self._offset = 0  # where this start's log begins in `log`
        self._cursor = 0  # how far `next_line` has read
        #: Whether `stop` had to SIGKILL the process (it did not end within its timeout).
        self.killed = False

    async def __aenter__(self) -> WebProcess:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> WebProcess:
        """Start the process and wait until it is ready (see the class)."""
        assert self._process is None, "a WebProcess starts once; make another to start again"
        self._offset = self._cursor = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:  # the child (and any process it starts) keeps its own copy
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "web", *self.args,
                cwd=ROOT, env=self.env, stdout=log, stderr=log, preexec_fn=self.preexec_fn,
            )  # fmt: skip
        try:
            if self.ready is not None:
                await self._until_ready(self.ready)
        except BaseException:
            await self.kill()
            raise
        return self

    async def _until_ready(self, ready: Callable[[WebProcess], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready(self):
            self._check_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"python -m web not ready in {self.start_timeout} s:\n{self.text}")
            await asyncio.sleep(0.05)
        if self.found(API_URL) is None:
            return
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                try:
                    async with session.get(f"{self.url}/health/live") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                self._check_running()
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.url}/health/live did not answer 200:\n{self.text}")
                await asyncio.sleep(0.05)

    def _check_running(self) -> None:
        if self.returncode is not None:
            raise AssertionError(f"python -m web exited early ({self.returncode}):\n{self.text}")

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def text(self) -> str:
        """What this start has logged so far (stdout and stderr)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def found(self, pattern: re.Pattern[str]) -> str | None:
        """The first group of `pattern`'s first match in this start's log (None: no match yet)."""
        match = pattern.search(self.text)
        return match.group(1) if match else None

    def _logged(self, pattern: re.Pattern[str], what: str) -> str:
        found = self.found(pattern)
        assert found is not None, f"python -m web has not logged {what}:\n{self.text}"
        return found

    @property
    def url(self) -> str:
        """The API's URL (`http://127.0.0.1:PORT`), as logged."""
        return self._logged(API_URL, "its API's URL")

    @property
    def admin_url(self) -> str:
        """The admin listener's URL (health, readiness, metrics), as logged."""
        return self._logged(ADMIN_URL, "its admin listener's URL")

    @property
    def endpoint_url(self) -> str:
        """The embedded AWS endpoint's URL, as logged (embedded mode only)."""
        return self._logged(ENDPOINT_URL, "an embedded endpoint's URL")

    @property
    def demo_keys_file(self) -> Path:
        """Where the process writes its demo users' keys (`IMGSVC_DEMO_KEYS_FILE`, else the data
        directory's, else the checkout's)."""
        if "IMGSVC_DEMO_KEYS_FILE" in self.env:
            return ROOT / self.env["IMGSVC_DEMO_KEYS_FILE"]
        data_dir = self.env.get("IMGSVC_DATA_DIR")
        if "--data-dir" in self.args:
            data_dir = self.args[self.args.index("--data-dir") + 1]
        return ROOT / data_dir / "demo-keys.json" if data_dir else ROOT / "demo-keys.json"

    def demo_key(self, user: str = USER) -> str:
        """The API key of the demo user `user` (`USER` unless named)."""
        return read_demo_keys(self.demo_keys_file)[user]

    async def next_line(self, timeout: float = 30) -> str:
        """The next line of this start's log that `next_line` has not returned yet (from its first
        line on), waiting for it; fails if the process ends first."""
        async with asyncio.timeout(timeout):
            while True:
                ended = self.returncode is not None  # before reading: then the read saw everything
                with self.log.open("rb") as log:
                    log.seek(self._cursor)
                    line = log.readline()
                if line.endswith(b"\n"):
                    self._cursor += len(line)
                    return line.decode(errors="replace").rstrip("\n")
                if ended:
                    raise AssertionError(f"python -m web exited ({self.returncode}):\n{self.text}")
                await asyncio.sleep(0.05)

    async def read_until(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        """Read the log on with `next_line` up to the first line `predicate` holds for; that line."""
        async with asyncio.timeout(timeout):
            while not predicate(line := await self.next_line(timeout)):
                pass
            return line

    async def exited(self, timeout: float = 60) -> int:
        """Wait for the process to end by itself; its exit status."""
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL the process (if it still runs) and reap it."""
        if self.returncode is None:
            self.process.kill()
        await self.process.wait()

    async def stop(self, timeout: float | None = None) -> int:
        """SIGTERM the process, SIGKILL it if it has not ended after `timeout` seconds (the
        `stop_timeout` given), and reap it; its exit status (0: it shut down cleanly, -9: it had
        to be killed). A process that ended already is only reaped."""
        if self._process is None:
            return 0
        try:
            if self.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(self.stop_timeout if timeout is None else timeout):
                        await self.process.wait()
                except TimeoutError:
                    self.killed = True
        finally:
            await self.kill()  # only reaps what ended; kills what did not (also when cancelled)
        return self.process.returncode  # type: ignore[return-value]


#: Seconds an emulator (MiniStack, SeaweedFS) has to start answering.
EMULATOR_STARTUP_SECONDS = 30


@contextmanager
def serving(
    name: str,
    args: list[str],
    env: dict[str, str],
    log: Path,
    ready: Callable[[], bool],
    cwd: Path | None = None,
) -> Iterator[None]:
    """A server process of the tests' own (an emulator) for the block: started with its output in
    `log`, waited for until `ready()`, stopped (killed if it will not) afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + EMULATOR_STARTUP_SECONDS
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
