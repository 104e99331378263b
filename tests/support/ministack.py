"""MiniStack, a second AWS emulator beside moto (issue 30): started by the tests on a free port on
127.0.0.1, from a virtualenv of its own (`make ministack`: it pins its own botocore), with its
authentication on.

moto is the most lenient emulator where this service leans on AWS most (it checks no signature,
and encodes event keys its own way); MiniStack is strict where AWS is. The service reaches it as it
reaches the embedded endpoint (`IMGSVC_MODE=embedded`, its fixed credentials): MiniStack takes
that key as its root caller (`AWS_ACCESS_KEY_ID` in its environment). It checks presigned URLs
whoever signed them, and the header signatures of ordinary requests for keys made through its
IAM only (a known gap: AWS checks every one).
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.aws.clients import EMBEDDED_CREDENTIALS
from tests.support.processes import serving
from tests.support.settings import ROOT

#: Where `make ministack` installs it.
EXECUTABLE = ROOT / ".venv-ministack" / "bin" / "ministack"
SERVICES = "s3,sqs,dynamodb,iam,sts"


def available() -> bool:
    return EXECUTABLE.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def ministack(log: Path) -> Iterator[str]:
    """A MiniStack server for the block: its endpoint URL. Its log goes to `log`."""
    port = _free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(log.parent),
        "TMPDIR": str(log.parent),
        "GATEWAY_PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        "AUTH": "true",
        "SERVICES": SERVICES,
        "IOT_MTLS_ENABLED": "0",
        "LOG_LEVEL": "WARNING",
        # The key the service signs with in embedded mode is MiniStack's root caller.
        "AWS_ACCESS_KEY_ID": EMBEDDED_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": EMBEDDED_CREDENTIALS["aws_secret_access_key"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    endpoint = f"http://127.0.0.1:{port}"
    with serving(f"MiniStack on {endpoint}", [str(EXECUTABLE)], env, log, lambda: _healthy(endpoint)):
        yield endpoint


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_ministack/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def reset(endpoint: str) -> None:
    """Forget every bucket, queue, table and IAM user (between tests)."""
    request = urllib.request.Request(f"{endpoint}/_ministack/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
