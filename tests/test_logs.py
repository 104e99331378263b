"""Request ids and structured logs: one id follows an upload from its HTTP request to its thumbnail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from tests.support.clients import bearer
from tests.support.images import jpeg_bytes
from tests.support.processes import WebProcess, process_env
from tests.support.settings import USER

Client = TestClient[Any, Any]


async def test_every_response_names_its_request_id(
    api: Client, settings: Settings, clients: AwsClients
) -> None:
    mine = await api.put("/images/traced", data=jpeg_bytes(40, 30), headers={"X-Request-ID": "trace-42.a_b"})
    assert mine.headers["X-Request-ID"] == "trace-42.a_b"
    head = await clients.s3.head_object(Bucket=settings.aws.source_bucket, Key=f"{USER}/traced")
    assert head["Metadata"]["request-id"] == "trace-42.a_b"  # travels with the original
    odd = await api.get("/images/traced", headers={"X-Request-ID": "no spaces or\tcontrols"})
    made = await api.get("/download/image?image_id=traced")  # a streamed response too
    errors = await api.get("/images/missing")
    ids = {odd.headers["X-Request-ID"], made.headers["X-Request-ID"], errors.headers["X-Request-ID"]}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)  # fresh ids where none (or a bad one) came


@pytest.mark.e2e
async def test_json_logs_carry_the_upload_request_id_into_the_consumer(tmp_path: Path) -> None:
    env = process_env(IMGSVC_DEMO_KEYS_FILE=str(tmp_path / "keys.json"), IMGSVC_LOG_FORMAT="json")
    async with WebProcess("--embedded-port", "0", env=env, log=tmp_path / "web.log") as web:

        async def read_until(predicate: Any) -> dict[str, Any]:
            line = await web.read_until(lambda raw: predicate(json.loads(raw)))  # one JSON object each
            found: dict[str, Any] = json.loads(line)
            return found

        listening = await read_until(lambda line: "API listening" in line["message"])
        url = listening["message"].split("url=")[1]
        assert url == web.url
        assert {"time", "level", "logger", "message", "request_id"} <= set(listening)
        async with aiohttp.ClientSession(url, headers=bearer(web.demo_key())) as session:
            response = await session.put(
                "/images/followed", data=jpeg_bytes(80, 60), headers={"X-Request-ID": "follow-me-1"}
            )
            assert response.status == 202
        done = await read_until(lambda line: "outcome=ready" in line["message"])
        assert done["request_id"] == "follow-me-1" and "message processed" in done["message"]
        assert done["logger"] == "pipeline.consumer.loop"
        assert await web.stop() == 0
