"""The embedded AWS stand-in: a moto server on localhost, for one-command local runs and tests."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from moto.server import ThreadedMotoServer

from pipeline.aws import embedded_dynamodb

log = logging.getLogger(__name__)


#: Threads the keep-alive endpoint serves requests on: above the long polls every consumer,
#: outbox reader and status long-poll of a one-box stack (or `scripts/cluster.py`'s) holds at once.
THREADS = 64
#: Seconds the endpoint's process has to start listening.
START_SECONDS = 30.0

Server = Literal["granian", "thread"]


@contextmanager
def embedded_aws(host: str, port: int, *, server: Server = "granian") -> Iterator[str]:
    """Run moto (S3, SQS, DynamoDB and everything else it mocks) on `host:port`; yields its URL.

    `granian`: in a child process, served by granian's keep-alive HTTP/1.1 server (moto's own,
    werkzeug's development server, closes every connection, so each AWS call paid a new TCP
    connection on both sides); the child dies with this process. `thread`: moto's server in a
    thread of this process (the tests' choice: their state is then inspectable in-process)."""
    if port:
        _check_free(host, port)
    embedded_dynamodb.install()
    if server == "thread":
        threaded = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        threaded.start()
        bound_host, bound_port = threaded.get_host_and_port()
        try:
            yield f"http://{bound_host}:{bound_port}"
        finally:
            threaded.stop()
        return
    port = port or _free_port(host)
    child = _start_granian(host, port)
    try:
        _wait_listening(child, host, port)
        yield f"http://{host}:{port}"
    finally:
        _stop(child)


def _start_granian(host: str, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--workers",
        "1",
        "--blocking-threads",
        str(THREADS),
        "--no-ws",
        "--log-level",
        "error",  # not its warning that 64 threads are many for few cores: they mostly wait
        "--host",
        host,
        "--port",
        str(port),
        "pipeline.aws.embedded_app:app",
    ]
    linux = sys.platform.startswith("linux")
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,  # its errors go to our stderr, as the in-thread server's did
        preexec_fn=_die_with(os.getpid(), _prctl()) if linux else None,  # noqa: PLW1509
        start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it in order
    )


def _prctl() -> Callable[..., int]:
    """libc's prctl: with `PR_SET_PDEATHSIG` in the child before exec, the child is sent SIGTERM
    when this process dies, however it dies (so a killed `python -m web` leaves no endpoint).
    Linux only: elsewhere the endpoint is stopped on a clean exit alone."""
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """What the child runs between fork and exec: one libc call, resolved beforehand (no import,
    no allocation), then a check that the parent did not die before it took effect."""

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # orphaned already: nobody would stop the endpoint
            os._exit(1)

    return preexec


def _wait_listening(child: subprocess.Popen[bytes], host: str, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise OSError(f"the embedded AWS endpoint exited at start (status {child.returncode}; see above)")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    _stop(child)
    raise OSError(f"the embedded AWS endpoint did not listen on {host}:{port} within {START_SECONDS:g}s")


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _check_free(host: str, port: int) -> None:
    """Fail with a clear message: moto's server thread would die silently and leave start() waiting."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(
                f"cannot start the embedded AWS endpoint on {host}:{port}: {exc.strerror} "
                "(set IMGSVC_EMBEDDED_PORT to another port)"
            ) from None
