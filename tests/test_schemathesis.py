"""Schemathesis against the running service (`python -m web`, embedded stack, a demo key): every
operation of `/openapi.json` is called with inputs from its coverage and fuzzing phases, and every
answer must be no server error and match the document (status, content type, headers, body).

Every check schemathesis has runs, except `positive_data_acceptance`: it expects any input that
matches the document to succeed, but some refusals cannot be written in JSON Schema (an upload
body that is not an image is 415, a cursor this API never issued is 400).

Bounded: `MAX_EXAMPLES` inputs per operation and a fixed seed. NUL characters are not
generated: aiohttp's HTTP parser rejects a request line or header with a NUL by closing the
connection before any handler or middleware runs, which schemathesis reports as a network
error rather than an answer. That refusal is right, and
`test_nul_in_a_header_is_refused_by_the_parser` pins it down instead.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.processes import WebProcess, process_env
from tests.support.settings import ROOT

pytestmark = pytest.mark.schemathesis

MAX_EXAMPLES = 40
SEED = 20261127  # fixed, so a CI failure can be reproduced; change it to explore further
MAX_SECONDS = 300
START_TIMEOUT = 60


@pytest.fixture(scope="module")
async def live_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, str]]:
    """`python -m web` with everything embedded, as `make run` starts it; its URL and a demo key."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    env = process_env(
        IMGSVC_DEMO_KEYS_FILE=str(tmp / "keys.json"),
        IMGSVC_MAX_BYTES=str(4 * 1024 * 1024),
        # Schemathesis sends many requests without a valid key on purpose; the shared failure
        # counter would soon answer 429 to everything and leave the routes behind it untested.
        IMGSVC_AUTH_FAILURES_ALLOWED="100000",
    )
    args = ("--embedded-port", "0")
    async with WebProcess(*args, env=env, log=tmp / "web.log", start_timeout=START_TIMEOUT) as web:
        yield web.url, web.demo_key()


def test_every_operation_answers_as_documented(live_api: tuple[str, str]) -> None:
    """The schemathesis CLI (its pytest plugin does not load under pytest 9); its JUnit report is
    kept in `test-artifacts/schemathesis/`."""
    url, key = live_api
    reports = ROOT / "test-artifacts" / "schemathesis"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--phases",
        "examples,coverage,fuzzing",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-allow-x00",
        "false",
        "--seed",
        str(SEED),
        "--exclude-checks",
        "positive_data_acceptance",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-junit-path",
        str(reports / "junit.xml"),
        "--no-color",
    ]
    run = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=MAX_SECONDS)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"schemathesis found problems:\n{summary}\n{run.stderr[-2000:]}"
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) >= 300, f"too few cases ran:\n{summary}"


def test_nul_in_a_header_is_refused_by_the_parser(live_api: tuple[str, str]) -> None:
    url, key = live_api
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    request = (
        f"GET /images HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nX-Probe: a\x00b\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request.encode())
        answer = conn.recv(65536)
    # aiohttp's parser answers 400 (plain text: no app code runs for a request it cannot parse)
    # and closes; never a 500, never a traceback.
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    assert b"Traceback" not in answer
