"""Resumable uploads in Chromium (issue 29, point 5): a 200 MB file dropped on the page goes up in
parts through a proxy that cuts the connection three times mid-part, and arrives byte for byte,
on each backend (on AWS the browser sends the parts to S3's presigned URLs); a reload half-way
leaves a line saying the upload waits, and choosing the file again sends only the rest."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
from pathlib import Path

import pytest

if importlib.util.find_spec("playwright") is None:  # not imported here: half a second a worker
    pytest.skip("the browser tier needs the test extra (make test)", allow_module_level=True)

from tests.support.browser import Session, SessionFactory, expect
from tests.support.clients import bearer
from tests.support.cutting import cutting_proxy
from tests.test_multipart import big_jpeg
from tests.test_resumable import RESUMABLE, original_digest

pytestmark = pytest.mark.browser
MIB = 1024 * 1024


async def sign_in_at(session: Session, base: str) -> None:
    page = session.page
    await page.goto(f"{base}/ui")
    await page.fill("#api-key", session.key)
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()


async def ready_image(session: Session, data: bytes) -> str:
    """The one image's id once the page shows it ready; its record is checked against `data`."""
    card = session.page.locator("#gallery li.card")
    await expect(card).to_have_attribute("data-status", "ready", timeout=180_000)
    image_id = str(await card.get_attribute("data-image-id"))
    status = await (await session.api.get(f"/images/{image_id}", headers=bearer(session.key))).json()
    assert status["bytes"] == len(data) and status["sha256"] == hashlib.sha256(data).hexdigest()
    assert await original_digest(session.api, session.key, image_id) == status["sha256"]
    return image_id


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    [pytest.param("aws", marks=pytest.mark.moto), pytest.param("local", marks=pytest.mark.backend("local"))],
)
async def test_a_200_mb_file_cut_three_times_arrives_whole(
    where: str, request: pytest.FixtureRequest, make_session: SessionFactory, tmp_path: Path
) -> None:
    data = big_jpeg(200 * MIB)
    path = tmp_path / "huge.jpg"
    path.write_bytes(data)
    if where == "aws":  # the browser sends the parts to S3's presigned URLs: the proxy is before moto
        async with cutting_proxy(request.getfixturevalue("moto_endpoint")) as proxy:
            session = await make_session(AWS_ENDPOINT_URL=proxy.url, **RESUMABLE)
            await session.sign_in()
            await session.page.set_input_files("#file-input", str(path))
            await ready_image(session, data)
    else:  # the parts go to the API's own part routes: the proxy is before the API
        session = await make_session(**RESUMABLE)
        async with cutting_proxy(session.url("").rstrip("/")) as proxy:
            await sign_in_at(session, proxy.url)
            await session.page.set_input_files("#file-input", str(path))
            await ready_image(session, data)
    assert proxy.cut == 3
    await expect(session.page.locator("#uploads .state.done")).to_have_text("uploaded")
    await session.screenshot(f"ui-resumable-{where}")
    assert session.script_errors() == []


@pytest.mark.backend("local")
async def test_a_reload_half_way_then_the_same_file_sends_only_the_rest(
    make_session: SessionFactory, tmp_path: Path
) -> None:
    data = big_jpeg(48 * MIB)  # six parts
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    session = await make_session(**RESUMABLE)
    page = session.page
    async with cutting_proxy(session.url("").rstrip("/"), cuts=0, pace=0.005) as proxy:  # ~13 MB/s
        await sign_in_at(session, proxy.url)
        await page.set_input_files("#file-input", str(path))
        card = page.locator("#gallery li.card")
        await expect(card).to_have_count(1)
        image_id = str(await card.get_attribute("data-image-id"))
        async with asyncio.timeout(60):  # reloaded once two parts are in
            while True:
                listed = await session.api.get(
                    f"/images/{image_id}/upload-parts", headers=bearer(session.key)
                )
                received = [p["number"] for p in (await listed.json())["parts"] if p["received"]]
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.05)
        await page.reload()
        paused = page.locator("#uploads li.paused")
        await expect(paused).to_contain_text("paused: choose it again to resume")
        await session.screenshot("ui-resumable-paused")
        before = len(session.requests)
        await page.set_input_files("#file-input", str(path))
        await ready_image(session, data)
    await expect(paused).to_have_count(0)
    resent = [u for u in session.requests[before:] if any(f"/parts/{n}?" in u for n in received)]
    assert resent == []  # what had arrived was not sent again
    assert session.script_errors() == []
