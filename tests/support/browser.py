"""The browser tier's parts: Debian's Chromium driven by Playwright against the real app (API and
in-process consumer on a localhost port), a session that records the page's errors and requests,
and axe-core's accessibility check. Screenshots land in `test-artifacts/`. The test modules import
the fixtures (`browser`, `make_session`, `session`) by name."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from tests.support.clients import ClientFactory, issue_key
from tests.support.settings import ROOT, USER

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

Client = TestClient[Any, Any]
ARTIFACTS = ROOT / "test-artifacts"
CAT = ROOT / "input" / "cat.jpg"
DOG = ROOT / "input" / "dog.jpg"
TIMEOUT_MS = 30_000
#: The per-image link request the gallery used to make; the listing's links replace it.
LINK_REQUEST = re.compile(r"/images/[^/?]+/url")
#: How many lines of text an element's contents take up on screen.
LINES = """el => {
    const range = document.createRange();
    range.selectNodeContents(el);
    return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
}"""


def expect(actual: Any) -> Any:
    """Playwright's `expect`, imported when a browser test runs."""
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(actual)


def chromium_path() -> str:
    """Debian's Chromium (`apt-get install chromium`; `make test` installs it when missing)."""
    found = os.environ.get("IMGSVC_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is missing: run `make test` (it installs it) or `apt-get install chromium`")
    return found


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

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
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))

    def script_errors(self) -> list[str]:
        """Console errors, but for the browser's own notice of each refused request (a 4xx upload)."""
        return [e for e in self.errors if not e.startswith("Failed to load resource")]

    def link_requests(self) -> list[str]:
        return [url for url in self.requests if LINK_REQUEST.search(url)]

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

    async def gallery_ids(self) -> list[str]:
        ids: list[str] = await self.page.locator("#gallery li.card").evaluate_all(
            "cards => cards.map(c => c.dataset.imageId)"
        )
        return ids

    async def listed_ids(self) -> list[str]:
        body = await (await self.api.get("/images")).json()
        return [image["image_id"] for image in body["images"]]

    async def thumbnail_loaded(self, image_id: str) -> None:
        img = self.card(image_id).locator(".thumb img")
        await expect(img).to_be_visible()
        await self.page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=await img.element_handle()
        )


SessionFactory = Callable[..., Awaitable[Session]]


@pytest.fixture
async def make_session(
    make_settings: Callable[..., Settings], make_client: ClientFactory, browser: Browser
) -> AsyncIterator[SessionFactory]:
    """A session on an app with these settings (on top of an in-process consumer) and viewport."""
    contexts = []

    async def make(width: int = 1100, height: int = 800, **env: str) -> Session:
        settings = make_settings(IMGSVC_RUN_CONSUMER="true", **env)
        api = await make_client(settings)
        key = await issue_key(api.server.app, USER)
        context = await browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        origin = str(api.make_url("/"))[:-1]
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
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
        return Session(api, key, page)

    yield make
    for context in contexts:
        await context.close()


@pytest.fixture(name="session")
async def ui_session(make_session: SessionFactory) -> Session:
    """A session on an app with the tests' settings, a desktop viewport."""
    return await make_session()


AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
#: What axe-core's findings may not include (its impacts: minor, moderate, serious, critical).
BLOCKING = ("serious", "critical")


async def accessibility_problems(page: Page, context: str = "document") -> list[str]:
    """axe-core's serious and critical findings on the page as it is now (WCAG 2.1 AA rules), one
    line each: the rule, what it says and where. The script is installed by `make browser`."""
    if not AXE.exists():
        pytest.fail(f"axe-core is missing at {AXE}: run `make browser` (make test does)")
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated, not a <script>: the page's policy allows no inline script (rightly).
        await page.evaluate(AXE.read_text())
    found: list[dict[str, Any]] = await page.evaluate(
        """async (context) => {
            const root = context === "document" ? document : document.querySelector(context);
            const result = await axe.run(root, {
                runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]},
            });
            return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                where: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
        }""",
        context,
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {v['where']}" for v in found if v["impact"] in BLOCKING
    ]
