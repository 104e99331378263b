"""The UI as a library of images in Chromium: finding (search, status, order, every page by
scrolling), one image's page (facts, renditions, links, visibility, the focal point by click or
keys), several at once (shift-click, select all, bulk visibility and delete with undo), and
keyboard-only use with axe-core's check of each state. Screenshots land in `test-artifacts/`."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import aiohttp
import pytest

if importlib.util.find_spec("playwright") is None:  # not imported here: half a second a worker
    pytest.skip("the browser tier needs the test extra (make test)", allow_module_level=True)

from tests.support.browser import CAT, DOG, Session, SessionFactory, accessibility_problems, expect
from tests.support.images import jpeg_bytes

pytestmark = [pytest.mark.browser, pytest.mark.backend("local")]


async def settled(session: Session, count: int) -> list[dict[str, Any]]:
    """Wait for the in-process consumer to finish every image; their records."""
    async with asyncio.timeout(120):
        while True:
            images = (await (await session.api.get("/images?limit=100")).json())["images"]
            if len(images) == count and all(i["status"] in ("ready", "failed") for i in images):
                return list(images)
            await asyncio.sleep(0.3)


async def shown_ids(session: Session) -> list[str]:
    ids: list[str] = await session.page.locator("#gallery li.card:visible").evaluate_all(
        "cards => cards.map(c => c.dataset.imageId)"
    )
    return ids


async def test_search_status_and_order_find_images_and_scrolling_loads_every_page(session: Session) -> None:
    for i in range(64):
        name = f"beach-{i}.jpg" if i % 16 == 0 else f"photo-{i}.jpg"
        sent = await session.api.put(
            f"/images/img{i:02d}", params={"file_name": name}, data=jpeg_bytes(24, 16)
        )
        assert sent.status == 202
    # JPEG's start, then nothing: it fails, with its reason.
    broken = await session.api.put("/images/zz-broken", data=b"\xff\xd8\xff\xe0" + b"\0" * 64)
    assert broken.status == 202
    await settled(session, 65)
    await session.sign_in()
    page = session.page
    cards = page.locator("#gallery li.card")
    await expect(cards).to_have_count(60)  # one page; the rest as the end comes into view
    await page.locator("#more").scroll_into_view_if_needed()
    await expect(cards).to_have_count(65)
    await expect(page.locator("#more")).to_be_hidden()
    newest = await shown_ids(session)
    assert newest[0] == "zz-broken" and newest[1:] == [f"img{i:02d}" for i in range(63, -1, -1)]

    await page.fill("#search", "BEACH")  # any case, in the file name
    await expect(cards).to_have_count(4)
    assert await shown_ids(session) == ["img48", "img32", "img16", "img00"]
    await session.screenshot("ui-search")
    await page.select_option("#sort", "id-asc")
    await expect(cards.first).to_have_attribute("data-image-id", "img00")
    assert await shown_ids(session) == ["img00", "img16", "img32", "img48"]
    await page.fill("#search", "nothing like it")
    await expect(page.locator("#empty")).to_have_text("No images match.")
    await page.fill("#search", "")
    await page.select_option("#status-filter", "failed")
    await expect(cards).to_have_count(1)
    await expect(cards.first.locator(".reason")).not_to_be_empty()
    await page.select_option("#status-filter", "")
    await page.select_option("#sort", "id-desc")
    await expect(cards.first).to_have_attribute("data-image-id", "zz-broken")
    await expect(cards).to_have_count(60)
    assert session.script_errors() == []


async def test_the_image_page_shows_its_facts_links_and_sets_the_focal_point(session: Session) -> None:
    assert (
        await session.api.put("/images/cat", params={"file_name": "cat.jpg"}, data=CAT.read_bytes())
    ).status == 202
    await settled(session, 1)
    await session.sign_in()
    page = session.page
    await session.thumbnail_loaded("cat")
    await session.card("cat").locator(".thumb").click()
    viewer = page.locator("#viewer")
    await expect(viewer).to_be_visible()
    facts = page.locator("#viewer-facts")
    for text in ("cat", "451\u00d7300", "JPEG", "ready", "never", "private"):
        await expect(facts).to_contain_text(text)
    await expect(page.locator("#viewer-renditions")).to_contain_text("256: 256\u00d7170")
    image = page.locator("#viewer-image")
    await expect(image).to_have_attribute("alt", "cat.jpg")
    await page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=await image.element_handle()
    )
    box = await image.bounding_box()
    assert box is not None and box["width"] > 300  # the image large, not the tile's thumbnail

    # A click sets the focal point where it lands, as fractions of the image.
    await image.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.75})
    await expect(page.locator("#viewer-status")).to_have_text("Focal point saved: crop=focal centres on it")
    point = (await (await session.api.get("/images/cat")).json())["focal_point"]
    assert abs(point["x"] - 0.25) < 0.02 and abs(point["y"] - 0.75) < 0.02, point
    # The arrow keys move it too (for a keyboard): right a twentieth.
    await page.focus("#viewer-stage")
    await page.keyboard.press("ArrowRight")
    await expect(facts).to_contain_text("30%, 75%")
    async with asyncio.timeout(5):
        while abs((await (await session.api.get("/images/cat")).json())["focal_point"]["x"] - 0.3) > 0.02:
            await asyncio.sleep(0.1)
    await session.screenshot("ui-image-page")
    assert session.script_errors() == []


async def test_the_image_page_copies_its_links_and_embed_code_and_opens_the_builder_on_its_focus(
    session: Session,
) -> None:
    assert (
        await session.api.put("/images/cat", params={"file_name": "cat.jpg"}, data=CAT.read_bytes())
    ).status == 202
    await settled(session, 1)
    assert (await session.api.put("/images/cat/focal-point", json={"x": 0.3, "y": 0.6})).status == 200
    await session.sign_in()
    page = session.page
    await session.thumbnail_loaded("cat")
    await session.card("cat").locator(".thumb").click()
    viewer = page.locator("#viewer")
    await expect(page.locator("#viewer-facts")).to_contain_text("30%, 60%")
    await page.click("#viewer-srcset")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("<img src=") and " 256w" in copied and 'alt="cat.jpg"' in copied
    await page.click("#viewer-copy-url")
    url = await page.evaluate("navigator.clipboard.readText()")
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:  # no key
        assert response.status == 200 and await response.read() == CAT.read_bytes()

    # Public: the embed code's URLs work for anybody.
    await page.click("#viewer-visibility")
    await expect(page.locator("#viewer-visibility")).to_have_text("Make private")
    await page.click("#viewer-embed")
    embed = await page.evaluate("navigator.clipboard.readText()")
    src = embed.split('"')[1]
    assert "/p/" in src
    async with aiohttp.ClientSession() as anonymous, anonymous.get(src) as response:
        assert response.status == 200
    await expect(session.card("cat").locator(".visibility")).to_have_text("Make private")

    # The link builder opens on the focal point.
    await page.click("#viewer-builder")
    await expect(page.locator("#builder")).to_be_visible()
    assert await page.locator("#builder-form [name=crop]").input_value() == "focal"
    await expect(page.locator("#builder-facts")).to_contain_text("\u00d7")
    await page.keyboard.press("Escape")
    await expect(page.locator("#builder")).to_be_hidden()
    await expect(viewer).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()
    assert session.script_errors() == []


async def test_several_images_change_visibility_and_go_together(session: Session) -> None:
    for i in range(4):
        assert (await session.api.put(f"/images/b{i}", data=jpeg_bytes(40, 30))).status == 202
    await settled(session, 4)
    await session.sign_in()
    page = session.page
    await expect(page.locator("#gallery li.card")).to_have_count(4)
    # Newest first: b3, b2, b1, b0. A click, then a shift-click two further on: three chosen.
    await session.card("b3").locator(".select").click()
    await session.card("b1").locator(".select").click(modifiers=["Shift"])
    await expect(page.locator("#bulk-count")).to_have_text("3 selected")
    await session.screenshot("ui-bulk")
    await page.click("#bulk-public")
    await expect(page.locator("#bulk")).to_be_hidden()
    public = {i["image_id"]: i["public"] for i in (await (await session.api.get("/images")).json())["images"]}
    assert public == {"b3": True, "b2": True, "b1": True, "b0": False}
    await expect(session.card("b2").locator(".visibility")).to_have_text("Make private")

    await page.click("#gallery li.card >> nth=0 >> .select")
    await page.click("#bulk-all")
    await expect(page.locator("#bulk-count")).to_have_text("4 selected")
    await page.click("#bulk-delete")
    await expect(page.locator("#confirm-delete-name")).to_have_text("4 images")
    await page.locator("#confirm-delete button[value=delete]").click()
    await expect(page.locator("#gallery li.card:visible")).to_have_count(0)
    await page.click("#undo-button")  # all four come back, none was sent
    await expect(page.locator("#gallery li.card:visible")).to_have_count(4)
    await session.card("b0").locator(".select").click()
    await page.click("#bulk-all")
    await page.click("#bulk-delete")
    await page.locator("#confirm-delete button[value=delete]").click()
    async with asyncio.timeout(15):  # sent once the undo's few seconds are over
        while (await (await session.api.get("/images")).json())["images"]:
            await asyncio.sleep(0.3)
    await expect(page.locator("#empty")).to_be_visible()
    assert session.script_errors() == []


async def test_keyboard_alone_reaches_everything_and_axe_finds_nothing_serious(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    page = session.page
    await page.goto(session.url("/ui"))
    assert await accessibility_problems(page) == []
    # Keys only: the key field is reached by Tab, and Enter signs in.
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.id")
    assert focused == "api-key", focused
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible
    await page.keyboard.type(session.key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#app")).to_be_visible()
    assert (
        await session.api.put("/images/dog", params={"file_name": "dog.jpg"}, data=DOG.read_bytes())
    ).status == 202
    await settled(session, 1)
    await page.reload()
    await session.thumbnail_loaded("dog")
    assert await session.card("dog").locator(".thumb img").get_attribute("alt") == "dog.jpg"
    assert await accessibility_problems(page) == []
    # Tab to the card's image, Enter opens its page, Escape closes it and gives the focus back.
    for _ in range(40):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.classList.contains('thumb')"):
            break
    else:
        pytest.fail("Tab never reached the image")
    await page.keyboard.press("Enter")
    await expect(page.locator("#viewer")).to_be_visible()
    await expect(page.locator("#viewer-facts")).to_contain_text("ready")
    assert await accessibility_problems(page) == []
    await page.keyboard.press("Escape")
    await expect(page.locator("#viewer")).to_be_hidden()
    assert await page.evaluate("document.activeElement.classList.contains('thumb')")
    # The dialogs: the link builder and the delete's question.
    await session.card("dog").locator(".build-link").click()
    await expect(page.locator("#builder-facts")).to_contain_text("\u00d7")
    assert await accessibility_problems(page) == []
    await page.keyboard.press("Escape")
    await session.card("dog").locator(".delete").click()
    assert await page.evaluate("document.activeElement.textContent") == "Cancel"
    assert await accessibility_problems(page) == []
    await page.keyboard.press("Escape")
    # On a phone too.
    phone = await make_session(width=390, height=800)  # an app of its own
    assert (
        await phone.api.put("/images/dog", params={"file_name": "dog.jpg"}, data=DOG.read_bytes())
    ).status == 202
    await settled(phone, 1)
    await phone.sign_in()
    await phone.thumbnail_loaded("dog")
    assert await accessibility_problems(phone.page) == []
    await phone.screenshot("ui-phone-gallery")
    assert session.script_errors() == [] and phone.script_errors() == []
