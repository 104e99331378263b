"""The browser UI in a real browser: Playwright driving Debian's Chromium against the real app
(API and in-process consumer on a localhost port). Screenshots land in `test-artifacts/`."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

if importlib.util.find_spec("playwright") is None:  # not imported here: half a second a worker
    pytest.skip("the browser tier needs the test extra (make test)", allow_module_level=True)
if TYPE_CHECKING:
    from playwright.async_api import Route

from tests.support.browser import ARTIFACTS, CAT, DOG, LINES, Session, SessionFactory, expect
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import USER
from web.keys import SETTINGS, STORAGE

#: The browser meets the API; only the presigned PUT straight into S3 needs moto (marked).
pytestmark = [pytest.mark.browser, pytest.mark.backend("local")]


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


async def test_sign_in_names_the_keys_file_takes_a_key_from_it_and_remembers_only_when_asked(
    session: Session, tmp_path: Path
) -> None:
    page = session.page
    await page.goto(session.url("/ui"))
    where = session.api.server.app[SETTINGS].accounts.demo_keys_file.resolve()
    await expect(page.locator("#demo-keys-file")).to_have_text(str(where))  # the data directory's
    keys = tmp_path / "demo-keys.json"
    keys.write_text(json.dumps({"keys": {"0" * 36: "isk_not_this_one", USER: session.key}}))
    await page.set_input_files("#keys-file", str(keys))
    await page.select_option("#key-pick", session.key)
    assert await page.input_value("#api-key") == session.key
    await session.screenshot("ui-sign-in-pick")
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()
    # Not remembered: another tab asks again.
    other = await page.context.new_page()
    await other.goto(session.url("/ui"))
    await expect(other.locator("#sign-in")).to_be_visible()
    # Remembered: another tab is signed in; signing out forgets it.
    await page.click("#sign-out")
    await page.fill("#api-key", session.key)
    await page.check("#remember")
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()
    await other.reload()
    await expect(other.locator("#app")).to_be_visible()
    await other.click("#sign-out")
    await page.reload()
    await expect(page.locator("#sign-in")).to_be_visible()
    assert session.script_errors() == []


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
        await expect(session.card(image_id)).to_have_attribute("data-status", "ready")
        await session.thumbnail_loaded(image_id)
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
    assert await session.gallery_ids() == [i["image_id"] for i in listed["images"]]
    assert session.link_requests() == []  # thumbnails come with the listing, not one request each
    await session.screenshot("ui-gallery")
    assert session.errors == []


@pytest.mark.backend("aws")
async def test_where_offered_the_browser_puts_the_bytes_straight_into_s3(
    make_session: SessionFactory, moto_endpoint: str
) -> None:
    """Through the source bucket's CORS rules and the page's connect-src, to the presigned URL;
    the API sees only the small reservation request."""
    session = await make_session(IMGSVC_UPLOAD_MODES="api,presigned")
    policy = (await session.api.get("/ui")).headers["Content-Security-Policy"]
    assert f"connect-src 'self' {moto_endpoint}" in policy
    await session.sign_in()
    page = session.page
    puts: list[str] = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    await page.set_input_files("#file-input", [str(CAT), str(DOG)])
    rows = page.locator("#uploads li")
    await expect(rows.locator(".state.done")).to_have_count(2)
    ids = await rows.evaluate_all("rows => rows.map(r => r.dataset.imageId)")
    for image_id in ids:
        await expect(session.card(image_id)).to_have_attribute("data-status", "ready")
        await session.thumbnail_loaded(image_id)
    await expect(session.card(ids[0]).locator(".name")).to_have_text("cat.jpg")
    assert len(puts) == 2 and all(url.startswith(moto_endpoint + "/") for url in puts)
    assert not [url for url in session.requests if "/images?file_name=" in url]  # never through the API
    assert session.script_errors() == []


async def test_the_gallery_is_newest_first_after_a_reload_too(session: Session) -> None:
    for name in ("oldest", "middle", "newest"):
        assert (await session.api.put(f"/images/{name}", data=CAT.read_bytes())).status == 202
    await session.sign_in()
    page = session.page
    for name in ("oldest", "middle", "newest"):
        await expect(session.card(name)).to_have_attribute("data-status", "ready")
    assert await session.listed_ids() == ["newest", "middle", "oldest"]
    assert await session.gallery_ids() == ["newest", "middle", "oldest"]

    await page.set_input_files("#file-input", [str(DOG)])  # a new upload goes on top, live
    await expect(page.locator("#gallery li.card")).to_have_count(4)
    uploaded = await page.locator("#uploads li").get_attribute("data-image-id")
    assert (await session.gallery_ids())[0] == uploaded
    await expect(session.card(str(uploaded))).to_have_attribute("data-status", "ready")
    await page.reload()  # and stays there, in the listing's order
    await expect(page.locator("#gallery li.card")).to_have_count(4)
    assert (
        await session.gallery_ids() == await session.listed_ids() == [uploaded, "newest", "middle", "oldest"]
    )
    for image_id in await session.gallery_ids():
        await session.thumbnail_loaded(image_id)
    assert session.link_requests() == []
    assert session.errors == []


async def test_fifty_images_load_from_their_stored_renditions_with_nothing_made(session: Session) -> None:
    """The gallery's first load: every tile from a rendition the upload made (a srcset of what is
    stored), no variant made or charged per tile. The time it takes is written to
    `test-artifacts/gallery-50.txt` (measured, not asserted: these machines are noisy)."""
    for i in range(50):
        assert (await session.api.put(f"/images/img{i:02d}", data=jpeg_bytes(320 + i, 240))).status == 202
    async with asyncio.timeout(120):  # the in-process consumer makes their renditions
        while any(
            i["status"] != "ready"
            for i in (await (await session.api.get("/images?limit=100")).json())["images"]
        ):
            await asyncio.sleep(0.5)
    await session.sign_in()
    page = session.page
    await page.reload()  # measured from a navigation, the key already in the tab
    loaded = """() => {
        const imgs = [...document.querySelectorAll('#gallery img')];
        return imgs.length === 50 && imgs.every(i => i.complete && i.naturalWidth > 0);
    }"""
    await page.wait_for_function(loaded)
    elapsed_ms = await page.evaluate("performance.now()")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "gallery-50.txt").write_text(f"50 tiles loaded {elapsed_ms:.0f} ms after navigation\n")
    await session.screenshot("ui-gallery-50")
    asked = [url for url in session.requests if "/variant" in url or ".auto?" in url]
    assert asked == []
    stored = [
        listed.key
        async for found in session.api.server.app[STORAGE].list_objects(
            session.api.server.app[SETTINGS].aws.dest_bucket, f"{USER}/"
        )
        for listed in found
    ]
    assert stored and not [key for key in stored if "/variants/" in key]
    assert session.script_errors() == []


async def test_a_refused_upload_shows_a_short_reason_and_no_finished_bar(
    make_session: SessionFactory, tmp_path: Path
) -> None:
    limit = 30_000  # the cat (38 KB) is too large, a small JPEG is not
    session = await make_session(IMGSVC_MAX_BYTES=str(limit))
    text = tmp_path / "notes.jpg"
    text.write_text("these are notes, not a photo\n" * 20)
    small = tmp_path / "small.jpg"
    small.write_bytes(jpeg_bytes(120, 80))
    refusals = {}
    for path, status in ((text, 415), (CAT, 413)):
        refused = await session.api.post("/images", data=path.read_bytes())
        assert refused.status == status
        refusals[path.name] = (await refused.json())["message"]
    await session.sign_in()
    page = session.page
    await page.set_input_files("#file-input", [str(text), str(CAT), str(small)])

    rows = page.locator("#uploads li")
    await expect(rows.locator(".state.done")).to_have_count(1)
    await expect(rows.locator(".state.failed")).to_have_count(2)
    for index, name in enumerate(("notes.jpg", "cat.jpg")):
        row, reason = rows.nth(index), refusals[name]
        label = row.locator(".state")
        await expect(label).to_have_text(reason)
        await expect(label).to_have_attribute("title", reason)  # the whole reason, on hover
        assert await label.evaluate(LINES) == 1
        await expect(row.locator("progress")).to_be_hidden()  # no bar that looks finished
    long_reason = rows.nth(1).locator(".state")  # "the upload is larger than the 30000 bytes allowed"
    assert await long_reason.evaluate("el => getComputedStyle(el).textOverflow") == "ellipsis"
    await expect(rows.nth(2).locator("progress")).to_be_visible()
    assert await rows.nth(2).locator("progress").evaluate("bar => bar.value") == 100
    await session.screenshot("ui-refused")
    assert session.script_errors() == []


async def test_letterbox_is_neutral_once_the_thumbnail_has_loaded(session: Session) -> None:
    assert (await session.api.put("/images/dog", data=DOG.read_bytes())).status == 202  # 4:3 in a wider tile
    record = await (await session.api.get("/images/dog", params={"wait": "20"})).json()
    assert record["status"] == "ready"
    tint = record["placeholder"]["color"]
    tint_rgb = f"rgb({int(tint[1:3], 16)}, {int(tint[3:5], 16)}, {int(tint[5:7], 16)})"
    page = session.page
    released = asyncio.Event()

    async def hold(route: Route) -> None:  # the thumbnail arrives when the test says so
        await released.wait()
        await route.continue_()

    await page.route("**/links/**", hold)
    await session.sign_in()
    tile = session.card("dog").locator(".thumb")
    background = "el => getComputedStyle(el).backgroundColor"
    await expect(tile.locator("img")).to_have_count(1)
    assert await tile.evaluate(background) == tint_rgb  # tinted while loading
    released.set()
    await session.thumbnail_loaded("dog")
    await page.wait_for_function(
        "([el, tint]) => getComputedStyle(el).backgroundColor !== tint",
        arg=[await tile.element_handle(), tint_rgb],
        timeout=5000,
    )
    red, green, blue = map(int, re.findall(r"\d+", await tile.evaluate(background))[:3])
    assert max(red, green, blue) - min(red, green, blue) <= 4, "the letterbox is not neutral"
    box, img = await tile.bounding_box(), await tile.locator("img").bounding_box()
    assert box and img and img["width"] < box["width"] - 20  # there is a letterbox to see
    await session.screenshot("ui-letterbox")
    assert session.errors == []


async def test_the_title_fits_on_one_line_on_a_phone(make_session: SessionFactory, tmp_path: Path) -> None:
    session = await make_session(width=390, height=844)
    text = tmp_path / "a-rather-long-file-name-for-a-phone.jpg"
    text.write_text("not a photo")
    await session.sign_in()
    page = session.page
    title = page.locator("header h1")
    assert await title.evaluate(LINES) == 1
    assert await title.evaluate("el => el.scrollWidth <= el.clientWidth")  # not clipped either
    sign_out = await page.locator("#sign-out").bounding_box()
    assert sign_out and sign_out["x"] + sign_out["width"] <= 390  # still on screen
    await page.set_input_files("#file-input", [str(DOG), str(text)])
    await expect(page.locator("#uploads .state.failed")).to_have_count(1)
    assert await page.locator("#uploads .state.failed").evaluate(LINES) == 1
    await expect(page.locator("#gallery li.card")).to_have_attribute("data-status", "ready")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    await session.screenshot("ui-phone")
    assert session.script_errors() == []


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

    await expect(page.locator("#usage-text")).to_contain_text("1 image · 37.8 KB")
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

    # Its thumbnail shown first: a delete while it is still being fetched answers that request
    # 404 (image gone), which the browser logs as an error.
    await session.thumbnail_loaded("cat")
    await card.locator(".delete").click()
    confirm = page.locator("#confirm-delete")
    await expect(confirm).to_contain_text("Delete cat?")
    await session.screenshot("ui-delete-confirm")
    await confirm.locator("button[value=delete]").click()
    await expect(card).to_be_hidden()
    await expect(page.locator("#undo")).to_contain_text("Deleted cat")
    await expect(card).to_have_count(0, timeout=15_000)  # sent once the undo's few seconds are over
    await expect(page.locator("#usage-text")).to_contain_text("0 images")
    await expect(page.locator("#empty")).to_be_visible()
    gone = await session.api.get("/images/cat")
    assert gone.status == 404
    assert session.errors == []


async def test_the_link_builder_previews_operations_and_copies_their_url(session: Session) -> None:
    assert (await session.api.put("/images/cat", data=CAT.read_bytes())).status == 202
    await session.sign_in()
    page = session.page
    card = session.card("cat")
    await expect(card).to_have_attribute("data-status", "ready")
    await card.locator(".build-link").click()
    dialog, facts = page.locator("#builder"), page.locator("#builder-facts")
    await expect(dialog).to_be_visible()
    # The first preview: 800 wide asked, the original's 451x300 given (no enlarging).
    await expect(facts).to_contain_text("451\u00d7300")
    form = "#builder-form"
    await page.fill(f"{form} [name=w]", "200")
    await page.keyboard.press("Tab")  # a field counts once it is left
    await page.select_option(f"{form} [name=rotate]", "90")
    await page.select_option(f"{form} [name=format]", "png")
    await page.check(f"{form} [name=flop]")
    # Turned a quarter, then 200 wide: the box describes the result.
    await expect(facts).to_contain_text("200\u00d7301 · PNG")
    url = await page.locator("#builder-url").input_value()
    assert url.startswith(session.url("/links/")) and "rot90" in url and "flop" in url
    await page.click("#builder-copy")
    await expect(page.locator("#builder-status")).to_have_text("URL copied")
    assert await page.evaluate("navigator.clipboard.readText()") == url
    # The same picture at its width and twice it, for screens of two device pixels a CSS pixel.
    await page.click("#builder-srcset")
    await expect(page.locator("#builder-status")).to_have_text("Srcset copied")
    srcset = await page.evaluate("navigator.clipboard.readText()")
    assert srcset.startswith('<img src="') and " 200w, " in srcset and " 400w" in srcset, srcset
    assert 'sizes="200px" alt="cat"' in srcset
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:  # no key
        made = decode(await response.read())
        assert response.status == 200 and made.format == "PNG" and made.size == (200, 301)
    await session.screenshot("ui-link-builder")
    # Crop is for cover only; a refused combination is said in the dialog, naming the parameters.
    assert await page.locator(f"{form} [name=crop]").is_disabled()
    await page.fill(f"{form} [name=blur]", "2")
    await page.fill(f"{form} [name=sharpen]", "1")
    await page.keyboard.press("Tab")
    await expect(page.locator("#builder-error")).to_contain_text("blur and sharpen cannot be combined")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    assert session.script_errors() == []


async def test_a_delete_is_asked_first_and_can_be_undone(session: Session) -> None:
    assert (await session.api.put("/images/dog", data=DOG.read_bytes())).status == 202
    await session.sign_in()
    page = session.page
    card = session.card("dog")
    await expect(card).to_have_attribute("data-status", "ready")
    # Asked first: Escape (or Cancel, which has the focus) keeps it.
    await card.locator(".delete").click()
    await expect(page.locator("#confirm-delete")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.locator("#confirm-delete")).to_be_hidden()
    await expect(card).to_be_visible()
    # Confirmed, then undone within the few seconds: back, and never sent.
    await card.locator(".delete").click()
    await page.locator("#confirm-delete button[value=delete]").click()
    await expect(card).to_be_hidden()
    await session.screenshot("ui-delete-undo")
    await page.locator("#undo-button").click()
    await expect(card).to_be_visible()
    await page.wait_for_timeout(6000)  # past the undo window: nothing was sent
    assert (await session.api.get("/images/dog")).status == 200
    assert session.errors == []


async def test_make_an_image_public_and_copy_its_embed_code(session: Session) -> None:
    assert (await session.api.put("/images/cat", data=CAT.read_bytes())).status == 202
    await session.sign_in()
    page = session.page
    card = session.card("cat")
    await expect(card).to_have_attribute("data-status", "ready")
    await expect(card.locator(".embed")).to_be_hidden()
    await card.locator(".visibility").click()
    await expect(card.locator(".visibility")).to_have_text("Make private")
    await card.locator(".embed").click()
    code = page.locator("#link-output")
    await expect(code).to_have_value(re.compile(r'^<img src="http://[^"]+/p/[^"]+/256\.jpg" alt="cat"'))
    value = await code.input_value()
    assert await page.evaluate("navigator.clipboard.readText()") == value
    src = value.split('"')[1]
    async with aiohttp.ClientSession() as anonymous, anonymous.get(src) as response:  # anybody
        assert response.status == 200 and response.headers["Cache-Control"].startswith("public")
    await session.screenshot("ui-embed")
    await card.locator(".visibility").click()  # private again: the URL stops at once
    await expect(card.locator(".visibility")).to_have_text("Make public")
    await expect(card.locator(".embed")).to_be_hidden()
    async with aiohttp.ClientSession() as anonymous, anonymous.get(src) as response:
        assert response.status == 404
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
