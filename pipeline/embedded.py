"""The embedded AWS stand-in: a moto server on localhost, for one-command local runs and tests."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

from pipeline import embedded_dynamodb

log = logging.getLogger(__name__)


@contextmanager
def embedded_aws(host: str, port: int) -> Iterator[str]:
    """Run moto (S3, SQS and everything else it mocks) on `host:port`; yields its endpoint URL."""
    if port:
        _check_free(host, port)
    embedded_dynamodb.install()
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.stop()


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
