"""Prometheus metrics: the API's `/metrics`, the consumer's counters, and its own metrics port."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from pipeline.backends import open_backend
from pipeline.core.accounts import Accounts
from scripts.stack import free_port
from tests.support.consumers import drain
from tests.support.images import jpeg_bytes
from tests.support.processes import process_env, start, stops_cleanly
from tests.support.settings import USER

Client = TestClient[Any, Any]
#: The service's own metrics, the same on either backend.
pytestmark = pytest.mark.backend("local")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_made_up_methods_share_one_series(api: Client) -> None:
    """The HTTP parser takes dozens of methods (WebDAV's, RTSP's...): each would be series of its
    own on every route; the API serves seven, and counts the rest together."""
    unusual = ("PROPFIND", "MKCOL", "LOCK", "SEARCH", "REPORT", "PURGE", "LINK")
    for method in unusual:
        response = await api.request(method, "/images/anything")
        assert response.status == 405, method
    response = await api.get("/metrics")
    methods = {
        s.labels["method"]
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
        if s.name == "imgsvc_http_requests_total"
    }
    assert "OTHER" in methods
    assert not methods & set(unusual)


async def test_api_counts_requests_by_route_and_status(api: Client) -> None:
    data = jpeg_bytes(64, 48)
    assert (await api.put("/images/counted", data=data)).status == 202
    assert (await api.get("/images/never-uploaded")).status == 404
    response = await api.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    seen = samples(await response.text())
    put = (
        "imgsvc_http_requests_total",
        frozenset({("method", "PUT"), ("route", "/images/{image_id}"), ("status", "202")}),
    )
    missing = (
        "imgsvc_http_requests_total",
        frozenset({("method", "GET"), ("route", "/images/{image_id}"), ("status", "404")}),
    )
    assert seen[put] >= 1 and seen[missing] >= 1
    assert seen[("imgsvc_upload_bytes_total", frozenset())] >= len(data)
    timed = (
        "imgsvc_http_request_seconds_count",
        frozenset({("method", "PUT"), ("route", "/images/{image_id}")}),
    )
    assert seen[timed] >= 1
    # Labels are route patterns, never raw paths: no id ever becomes a label value.
    assert not any("counted" in str(labels) for _, labels in seen)


async def test_consumer_counts_outcomes_engines_and_dead_letters(settings: Settings) -> None:
    before = {
        "ready": value("imgsvc_messages_total", outcome="ready"),
        "dead": value("imgsvc_dead_letters_total", code="corrupt_image"),
        "timed": value("imgsvc_processing_seconds_count", engine="pillow", format="jpeg"),
        "received": value("imgsvc_messages_received_total"),
    }
    good = jpeg_bytes(300, 200)
    async with open_backend(settings) as ports:
        await Accounts(ports.tables).create_user(USER)  # objects put straight into a bucket need a known user
        for key, body in ((f"{USER}/fine", good), (f"{USER}/broken", good[:500])):
            await ports.storage.put(settings.aws.source_bucket, key, body, "application/octet-stream")
    await drain(settings)
    assert value("imgsvc_messages_total", outcome="ready") == before["ready"] + 1
    assert value("imgsvc_dead_letters_total", code="corrupt_image") == before["dead"] + 1
    assert value("imgsvc_processing_seconds_count", engine="pillow", format="jpeg") == before["timed"] + 1
    assert value("imgsvc_messages_received_total") >= before["received"] + 2
    assert value("imgsvc_jobs_in_flight") == 0
    assert value("imgsvc_queue_messages", queue="dlq", state="visible") >= 0  # sampled at start


@pytest.mark.e2e
async def test_consumer_process_serves_metrics_on_its_own_port(settings: Settings) -> None:
    port = free_port()
    env = process_env(IMGSVC_DATA_DIR=str(settings.local.data_dir), IMGSVC_METRICS_PORT=str(port))
    process = await start("-m", "pipeline", "consumer", env=env, stdout=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        text = await response.text()
                except aiohttp.ClientConnectionError:
                    text = ""
                if "imgsvc_queue_messages{" in text:  # sampled once the consumer runs
                    break
                await asyncio.sleep(0.2)
        assert "imgsvc_messages_received_total" in text and "imgsvc_jobs_in_flight" in text
    finally:
        assert await stops_cleanly(process)
