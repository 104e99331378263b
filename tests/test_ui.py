"""The browser UI in a real browser: Playwright driving Debian's Chromium against the real app
(API and in-process consumer on a localhost port). Screenshots land in `test-artifacts/`."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, async_playwright, expect

from config.settings import Settings
from tests.conftest import ROOT, USER, ClientFactory, decode, issue_key

Client = TestClient[Any, Any]
ARTIFACTS = ROOT / "test-artifacts"
CAT = ROOT / "input" / "cat.jpg"
DOG = ROOT / "input" / "dog.jpg"
TIMEOUT_MS = 30_000


def chromium_path() -> str:
    """Debian's Chromium (`apt-get install chromium`; `make test` installs it when missing)."""
    found = os.environ.get("IMGSVC_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is missing: run `make test` (it installs it) or `apt-get install chromium`")
    return found


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        await launched.close()


class Session:
    """The app, a key for USER and a fresh browser page that records console errors."""

    def __init__(self, api: Client, key: str, page: Page) -> None:
        self.api = api
        self.key = key
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def url(self, path: str) -> str:
        return str(self.api.make_url(path))

    async def sign_in(self) -> None:
        await self.page.goto(self.url("/ui"))
        await self.page.fill("#api-key", self.key)
        await self.page.click("#sign-in-form button[type=submit]")
        await expect(self.page.locator("#app")).to_be_visible()

    def card(self, image_id: str) -> Any:
        return self.page.locator(f'#gallery li[data-image-id="{image_id}"]')

    async def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
async def session(
    make_settings: Callable[..., Settings], make_client: ClientFactory, browser: Browser
) -> AsyncIterator[Session]:
    settings = make_settings(IMGSVC_RUN_CONSUMER="true")
    api = await make_client(settings)
    key = await issue_key(api.server.app, USER)
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=str(api.make_url("/"))[:-1])
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    # Every status a card shows, in order, so "pending, then ready" is checked, not assumed.
    await page.add_init_script(
        """
        window.__statuses = {};
        new MutationObserver((changes) => {
          for (const c of changes) {
            const li = c.target;
            if (!li.dataset || !li.dataset.imageId || !li.dataset.status) continue;
            const seen = (window.__statuses[li.dataset.imageId] ||= []);
            if (seen[seen.length - 1] !== li.dataset.status) seen.push(li.dataset.status);
          }
        }).observe(document, {attributes: true, subtree: true, attributeFilter: ["data-status"]});
        """
    )
    yield Session(api, key, page)
    await context.close()


async def test_root_leads_to_the_page_with_a_strict_policy(session: Session) -> None:
    response = await session.api.get("/", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/ui"
    page = await session.api.get("/ui")
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert (await session.api.get("/ui/assets/app.js")).status == 200
    missing = await session.api.get("/ui/assets/nope.js")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"


async def test_sign_in_refuses_a_bad_key_then_accepts_the_right_one(session: Session) -> None:
    page = session.page
    await page.goto(session.url("/ui"))
    await page.fill("#api-key", "isk_0000000000000000_notarealkeynotarealkeynotarealkeynotareal")
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#sign-in-error")).to_contain_text("not accepted")
    await expect(page.locator("#app")).to_be_hidden()

    await session.sign_in()
    await expect(page.locator("#empty")).to_be_visible()
    await page.reload()  # the key lives in the tab's session storage
    await expect(page.locator("#app")).to_be_visible()

    await page.click("#sign-out")
    await expect(page.locator("#sign-in")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('imgsvc.key')") is None
    await page.reload()
    await expect(page.locator("#sign-in")).to_be_visible()
    await session.screenshot("ui-signed-out")


async def test_several_files_upload_with_progress_and_turn_ready_or_failed_live(
    session: Session, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(CAT.read_bytes()[:5000])  # a JPEG header that fails to decode
    await session.sign_in()
    page = session.page
    await page.set_input_files("#file-input", [str(CAT), str(DOG), str(broken)])

    rows = page.locator("#uploads li")
    await expect(rows).to_have_count(3)
    await expect(rows.locator(".state.done")).to_have_count(3)
    assert await rows.locator("progress").evaluate_all("bars => bars.map(b => b.value)") == [100, 100, 100]
    ids = await rows.evaluate_all("rows => rows.map(r => r.dataset.imageId)")
    cat_id, dog_id, broken_id = ids

    for image_id in (cat_id, dog_id):
        card = session.card(image_id)
        await expect(card).to_have_attribute("data-status", "ready")
        img = card.locator(".thumb img")
        await expect(img).to_be_visible()
        await page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=await img.element_handle()
        )
    await expect(session.card(cat_id).locator(".details")).to_contain_text("451\u00d7300")
    await expect(session.card(cat_id).locator(".name")).to_have_text("cat.jpg")
    failed = session.card(broken_id)
    await expect(failed).to_have_attribute("data-status", "failed")
    await expect(failed.locator(".reason")).not_to_be_empty()
    await expect(failed.locator(".badge")).to_have_text("failed")

    statuses = await page.evaluate("window.__statuses")
    assert statuses[cat_id] == ["pending", "ready"] and statuses[broken_id] == ["pending", "failed"]
    listed = await (await session.api.get("/images")).json()
    assert {i["image_id"]: i["status"] for i in listed["images"]} == {
        cat_id: "ready",
        dog_id: "ready",
        broken_id: "failed",
    }
    await session.screenshot("ui-gallery")
    assert session.errors == []


async def test_drag_and_drop_uploads(session: Session) -> None:
    await session.sign_in()
    page = session.page
    payload = base64.b64encode(DOG.read_bytes()).decode()
    transfer = await page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped-dog.jpg", {type: "image/jpeg"}));
            return dt;
        }""",
        payload,
    )
    await page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    await expect(page.locator("#drop-zone")).to_have_class("over")
    await page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    card = page.locator("#gallery li.card")
    await expect(card).to_have_count(1)
    await expect(card).to_have_attribute("data-status", "ready")
    await expect(card.locator(".name")).to_have_text("dropped-dog.jpg")
    assert session.errors == []


async def test_copy_a_signed_link_then_delete(session: Session) -> None:
    assert (await session.api.put("/images/cat", data=CAT.read_bytes())).status == 202
    await session.sign_in()
    page = session.page
    card = session.card("cat")
    await expect(card).to_have_attribute("data-status", "ready")

    await card.locator(".copy-link").click()
    link = page.locator("#link-output")
    await expect(link).not_to_have_value("")
    url = await link.input_value()
    assert url.startswith(session.url("/links/"))
    assert await page.evaluate("navigator.clipboard.readText()") == url
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:  # no key
        assert response.status == 200
        assert decode(await response.read()).size == (451, 300)
    await session.screenshot("ui-link")

    await card.locator(".delete").click()
    await expect(card).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    gone = await session.api.get("/images/cat")
    assert gone.status == 404
    assert session.errors == []


async def test_file_names_are_shown_as_text_never_as_markup(session: Session, tmp_path: Path) -> None:
    hostile = tmp_path / "<img src=x onerror=window.__pwned=1>.jpg"
    hostile.write_bytes(CAT.read_bytes())
    await session.sign_in()
    page = session.page
    await page.set_input_files("#file-input", [str(hostile)])
    card = page.locator("#gallery li.card")
    await expect(card).to_have_attribute("data-status", "ready")
    await expect(card.locator(".name")).to_have_text(hostile.name)
    await expect(page.locator("#uploads .file")).to_have_text(hostile.name)
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("img[src=x]").count() == 0
