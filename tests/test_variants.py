"""On-demand variants through the real app, on both backends: made once from the original,
stored under the image, streamed with the download's caching and ranges, gone with the image."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image, ImageStat
from prometheus_client import REGISTRY

from config.settings import RenditionSpec, Settings
from pipeline.core.errors import CorruptImage, ImageChanged
from pipeline.core.layout import ImageRef
from pipeline.core.records import Counted, RecordStore
from pipeline.imaging.variants import parse_link_name, parse_variant
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import USER
from web.keys import RECORDS, VARIANTS

Client = TestClient[Any, Any]


async def ready_image(api: Client, backend: Backend, image_id: str, width: int, height: int) -> None:
    assert (await api.put(f"/images/{image_id}", data=jpeg_bytes(width, height))).status == 202
    assert (await consume(backend)).get("ready") == 1


async def stored_variants(backend: Backend, image_id: str) -> list[str]:
    prefix = ImageRef.of(USER, image_id).variants_prefix()
    keys: list[str] = []
    async for page in backend.storage.list_objects(backend.settings.aws.dest_bucket, prefix):
        keys += [listed.key for listed in page]
    return keys


def made(fmt: str) -> float:
    return REGISTRY.get_sample_value("imgsvc_variant_seconds_count", {"format": fmt}) or 0.0


def with_variants(settings: Settings, **limits: Any) -> Settings:
    return dataclasses.replace(settings, variants=dataclasses.replace(settings.variants, **limits))


async def test_a_variant_is_made_once_then_streamed_like_a_download(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    await ready_image(api, backend, "photo", 640, 480)
    before = made("jpeg")
    first = await api.get("/images/photo/variant", params={"w": "200"})
    assert first.status == 200, await first.text()
    body = await first.read()
    assert first.content_type == "image/jpeg" and decode(body).size == (200, 150)
    assert first.headers["ETag"] and "max-age" in first.headers["Cache-Control"]
    assert int(first.headers["Content-Length"]) == len(body)
    again = await api.get("/images/photo/variant", params={"w": "200", "q": "80", "fit": "contain"})
    assert await again.read() == body and again.headers["ETag"] == first.headers["ETag"]
    assert made("jpeg") == before + 1  # the second spelling found the first one's object
    cached = await api.get(
        "/images/photo/variant", params={"w": "200"}, headers={"If-None-Match": first.headers["ETag"]}
    )
    assert cached.status == 304
    part = await api.get("/images/photo/variant", params={"w": "200"}, headers={"Range": "bytes=0-9"})
    assert part.status == 206 and await part.read() == body[:10]
    await api.server.app[VARIANTS].idle()  # stored after the first answer went out
    assert len(await stored_variants(backend, "photo")) == 1


async def test_fits_crops_formats_and_no_upscaling(backend: Backend, make_client: ClientFactory) -> None:
    api = await make_client(backend.settings)
    await ready_image(api, backend, "photo", 640, 480)
    cases = [
        ({"w": "100", "h": "100", "fit": "cover", "crop": "attention", "format": "webp"}, (100, 100), "WEBP"),
        ({"w": "60", "h": "90", "fit": "fill", "format": "png"}, (60, 90), "PNG"),
        ({"w": "100", "h": "50", "fit": "cover", "crop": "faces"}, (100, 50), "JPEG"),
        ({"w": "300", "h": "300"}, (300, 225), "JPEG"),
        ({"h": "120"}, (160, 120), "JPEG"),
        ({"w": "2000"}, (640, 480), "JPEG"),  # never larger than the original unless asked
        ({"w": "1280", "upscale": "true"}, (1280, 960), "JPEG"),
    ]
    for params, size, fmt in cases:
        response = await api.get("/images/photo/variant", params=params)
        assert response.status == 200, (params, await response.text())
        image = decode(await response.read())
        assert (image.size, image.format) == (size, fmt), params
    negotiated = await api.get(
        "/images/photo/variant", params={"w": "64", "format": "auto"}, headers={"Accept": "image/avif,*/*"}
    )
    assert negotiated.content_type == "image/avif" and negotiated.headers["Vary"] == "Accept"
    plain = await api.get("/images/photo/variant", params={"w": "64", "format": "auto"})
    assert plain.content_type == "image/jpeg"


async def test_a_jpeg_decoded_at_a_reduced_scale_is_upright_and_the_right_size(
    backend: Backend, make_client: ClientFactory
) -> None:
    """Small variants of a JPEG are decoded at 1/2, 1/4 or 1/8 scale: the EXIF orientation still
    applies (stored sideways, shown upright: red on top, blue below) and every fit keeps its size."""
    api = await make_client(backend.settings)
    upright = Image.new("RGB", (480, 640), (220, 20, 20))
    upright.paste((20, 20, 220), (0, 320, 480, 640))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    out = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=90, exif=exif)
    assert (await api.put("/images/sideways", data=out.getvalue())).status == 202
    assert (await consume(backend)).get("ready") == 1
    cases = [
        ({"w": "60"}, (60, 80)),  # 1/8
        ({"h": "200"}, (150, 200)),  # 1/2
        ({"w": "100", "h": "100", "fit": "cover"}, (100, 100)),
        ({"w": "100", "h": "100", "fit": "cover", "crop": "focal"}, (100, 100)),
        ({"w": "50", "h": "150", "fit": "fill"}, (50, 150)),
        ({"w": "480"}, (480, 640)),  # whole
    ]
    for params, size in cases:
        response = await api.get("/images/sideways/variant", params=params)
        assert response.status == 200, (params, await response.text())
        image = decode(await response.read()).convert("RGB")
        assert image.size == size, params
        top, bottom = image.getpixel((size[0] // 2, 2)), image.getpixel((size[0] // 2, size[1] - 3))
        assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (params, top, bottom)


async def test_focal_crops_follow_the_stored_focal_point(
    backend: Backend, make_client: ClientFactory
) -> None:
    """The test image is a vertical gradient (dark top, light bottom): a wide strip cut around a
    focal point near the bottom is lighter than one cut near the top."""
    api = await make_client(backend.settings)
    await ready_image(api, backend, "photo", 640, 480)
    strip = {"w": "320", "h": "40", "fit": "cover", "crop": "focal"}
    brightness = []
    for y in (0.1, 0.9):
        put = await api.put("/images/photo/focal-point", json={"x": 0.5, "y": y})
        assert put.status == 200 and (await put.json())["focal_point"] == {"x": 0.5, "y": y}
        response = await api.get("/images/photo/variant", params=strip)
        image = decode(await response.read())
        assert image.size == (320, 40)
        brightness.append(ImageStat.Stat(image.convert("L")).mean[0])
    assert brightness[1] > brightness[0] + 100
    for bad in ({"x": 2, "y": 0.5}, {"x": "0.5", "y": 0.5}, {"y": 0.5}, {"x": True, "y": 0}):
        refused = await api.put("/images/photo/focal-point", json=bad)
        assert refused.status == 400 and (await refused.json())["error"] == "invalid_field"
    missing = await api.put("/images/nothing/focal-point", json={"x": 0.5, "y": 0.5})
    assert missing.status == 404


async def test_replacing_or_deleting_an_image_removes_its_variants_and_their_bytes(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    users = backend.tables.users
    await ready_image(api, backend, "photo", 640, 480)
    used = int((await users.get({"user_id": USER}))["bytes_used"])
    old = await api.get("/images/photo/variant", params={"w": "100"})
    assert decode(await old.read()).size == (100, 75)
    await api.server.app[VARIANTS].idle()  # stored after the answer went out
    assert int((await users.get({"user_id": USER}))["bytes_used"]) > used
    await ready_image(api, backend, "photo", 400, 400)  # replaced: a square now
    new = await api.get("/images/photo/variant", params={"w": "100"})
    assert decode(await new.read()).size == (100, 100)
    await api.server.app[VARIANTS].idle()
    [key] = await stored_variants(backend, "photo")  # only the new original's
    etag = (await (await api.get("/images/photo")).json())["etag"]
    assert key.startswith(ImageRef.of(USER, "photo").variants_prefix(etag))
    assert new.headers["ETag"] != old.headers["ETag"]
    assert (await api.delete("/images/photo")).status == 204
    assert await stored_variants(backend, "photo") == []
    assert int((await users.get({"user_id": USER})).get("bytes_used", 0)) == used - len(jpeg_bytes(640, 480))


async def test_bad_parameters_are_refused_naming_what_is_allowed(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(with_variants(backend.settings, max_pixels=1_000_000))
    await ready_image(api, backend, "photo", 64, 48)
    refusals = {
        "w=0": "w must be a whole number from 1 to 4096",
        "w=99999": "from 1 to 4096",
        "w=10&fit=squash": "contain, cover, fill",
        "w=10&format=gif": "jpeg, webp, avif, png, auto",
        "w=10&q=101": "q must be a whole number from 1 to 100",
        "w=10&width=3": "unknown parameter 'width'",
        "w=10&crop=attention": "crop applies to fit=cover only",
        "w=10&h=10&fit=cover&crop=middle": "centre, attention, entropy, focal, faces",
        "fit=cover": "needs w or h",
        "w=2000&h=1000": "at most 1000000 pixels",
        "w=1e3": "whole number",
        "w=10&w=20": "given once",
    }
    for query, message in refusals.items():
        response = await api.get(f"/images/photo/variant?{query}")
        body = await response.json()
        assert response.status == 400 and body["error"] == "invalid_field", (query, body)
        assert message in body["message"], (query, body)
    assert (await api.get("/images/missing/variant?w=10")).status == 404


async def test_limits_per_image_and_per_user(backend: Backend, make_client: ClientFactory) -> None:
    api = await make_client(with_variants(backend.settings, per_image=2, per_user_per_minute=3))
    await ready_image(api, backend, "photo", 64, 48)
    for width in (10, 20):
        assert (await api.get("/images/photo/variant", params={"w": str(width)})).status == 200
    full = await api.get("/images/photo/variant", params={"w": "30"})
    assert full.status == 422 and (await full.json())["error"] == "too_many_variants"
    assert (await api.get("/images/photo/variant", params={"w": "20"})).status == 200  # stored: fine
    await ready_image(api, backend, "other", 64, 48)
    assert (await api.get("/images/other/variant", params={"w": "10"})).status == 200
    limited = await api.get("/images/other/variant", params={"w": "20"})
    assert limited.status == 429 and (await limited.json())["error"] == "too_many_new_variants"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_concurrent_first_requests_share_one_generation(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    await ready_image(api, backend, "photo", 640, 480)
    before = made("webp")
    responses = await asyncio.gather(
        *(api.get("/images/photo/variant", params={"w": "320", "format": "webp"}) for _ in range(6))
    )
    bodies = {await r.read() for r in responses}
    assert [r.status for r in responses] == [200] * 6 and len(bodies) == 1
    assert made("webp") == before + 1


async def test_a_request_that_read_the_record_before_the_variant_was_counted_does_not_make_it_again(
    backend: Backend, make_client: ClientFactory
) -> None:
    """The first answer goes out before its variant is stored; a request that read the record in
    between and asks once the store has settled is served from storage, not made again."""
    api = await make_client(backend.settings)
    await ready_image(api, backend, "photo", 640, 480)
    ref = ImageRef.of(USER, "photo")
    stale = await api.server.app[RECORDS].read(ref)
    assert stale is not None and not stale.variant_names
    first = await api.get("/images/photo/variant", params={"w": "200"})
    body = await first.read()
    maker = api.server.app[VARIANTS]
    await maker.idle()
    before = made("jpeg")
    spec = parse_variant({"w": "200"}, "", backend.settings.variants)[0]
    key = ref.variant_key(stale.source_etag, spec.name)
    assert await maker.ensure(ref, stale, spec, key) is None  # storage has it
    assert made("jpeg") == before
    meta, data = await backend.storage.read(backend.settings.aws.dest_bucket, key, len(body) + 1)
    assert data == body and meta.etag == first.headers["ETag"]
    # Deleted, then the same bytes again (the same key): remembered, but made again, not a 404.
    assert (await api.delete("/images/photo")).status == 204
    await ready_image(api, backend, "photo", 640, 480)
    again = await api.get("/images/photo/variant", params={"w": "200"})
    assert again.status == 200 and await again.read() == body
    assert made("jpeg") == before + 1


async def test_a_variant_made_in_two_processes_is_counted_once(
    backend: Backend, make_client: ClientFactory
) -> None:
    """Two API processes (two apps, each its own maker) both miss and both make the variant: it is
    stored under one key, counted once on the record and charged once to the owner."""
    first, second = await make_client(backend.settings), await make_client(backend.settings)
    await ready_image(first, backend, "photo", 640, 480)
    users = backend.tables.users
    used = int((await users.get({"user_id": USER}))["bytes_used"])
    answers = await asyncio.gather(
        *(api.get("/images/photo/variant", params={"w": "240"}) for api in (first, second))
    )
    bodies = [await answer.read() for answer in answers]
    assert [a.status for a in answers] == [200, 200] and bodies[0] == bodies[1]
    for api in (first, second):
        await api.server.app[VARIANTS].idle()
    record = await first.server.app[RECORDS].read(ImageRef.of(USER, "photo"))
    assert record is not None and record.variant_count == 1 and record.variant_bytes == len(bodies[0])
    assert record.variant_names is not None and len(record.variant_names) == 1
    assert int((await users.get({"user_id": USER}))["bytes_used"]) == used + len(bodies[0])
    assert len(await stored_variants(backend, "photo")) == 1
    # Named on the record: the next request is answered from storage, by either process.
    stored = await second.get("/images/photo/variant", params={"w": "240"})
    assert await stored.read() == bodies[0] and stored.headers["ETag"] == answers[0].headers["ETag"]


async def test_a_pending_image_has_no_variants_yet(backend: Backend, make_client: ClientFactory) -> None:
    api = await make_client(backend.settings)
    assert (await api.put("/images/later", data=jpeg_bytes(64, 48))).status == 202
    response = await api.get("/images/later/variant", params={"w": "10"})
    assert response.status == 404 and (await response.json())["error"] == "thumbnail_pending"
    assert response.headers["Retry-After"]


PRESETS = "card=120x90:cover:attention:webp,hero=300:contain:auto:70"


async def test_presets_stand_for_their_parameters(backend: Backend, make_client: ClientFactory) -> None:
    settings = Settings.from_env({"IMGSVC_VARIANT_PRESETS": PRESETS})
    api = await make_client(with_variants(backend.settings, presets=settings.variants.presets))
    await ready_image(api, backend, "photo", 640, 480)
    card = await api.get("/images/photo/variant", params={"preset": "card"})
    image = decode(await card.read())
    assert (image.size, image.format) == ((120, 90), "WEBP")
    hero = await api.get("/images/photo/variant?preset=hero", headers={"Accept": "image/webp"})
    assert hero.content_type == "image/webp" and decode(await hero.read()).size == (300, 225)
    assert hero.headers["Vary"] == "Accept"
    for query, message in {
        "preset=card&w=10": "preset takes no other parameter",
        "preset=poster": "preset must be one of card, hero",
    }.items():
        refused = await api.get(f"/images/photo/variant?{query}")
        assert refused.status == 400 and message in (await refused.json())["message"]


async def test_a_deployment_can_serve_presets_only(backend: Backend, make_client: ClientFactory) -> None:
    settings = Settings.from_env({"IMGSVC_VARIANT_PRESETS": PRESETS, "IMGSVC_VARIANT_PRESETS_ONLY": "1"})
    api = await make_client(dataclasses.replace(backend.settings, variants=settings.variants))
    await ready_image(api, backend, "photo", 640, 480)
    refused = await api.get("/images/photo/variant", params={"w": "100"})
    assert refused.status == 400 and "presets only: ?preset=card|hero" in (await refused.json())["message"]
    assert (await api.get("/images/photo/url", params={"w": "100"})).status == 400
    assert (await api.get("/images/photo/variant", params={"preset": "card"})).status == 200


async def test_signed_variant_links_work_without_a_key_and_only_as_made(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    anonymous = await make_client(backend.settings, user=None)
    await ready_image(api, backend, "photo", 640, 480)
    made_link = await (await api.get("/images/photo/url", params={"w": "100", "format": "auto"})).json()
    assert made_link["variant"] == "w100-contain-q80.auto" and made_link["expires_at"]
    url = urlsplit(made_link["url"])
    path = f"{url.path}?{url.query}"
    plain = await anonymous.get(path)
    assert plain.status == 200 and plain.content_type == "image/jpeg" and plain.headers["Vary"] == "Accept"
    assert decode(await plain.read()).size == (100, 75)
    cache = plain.headers["Cache-Control"]  # one upload's bytes for the link's life: kept unasked
    assert cache.startswith("private, max-age=") and cache.endswith(", immutable")
    assert 3500 <= int(cache.split("max-age=")[1].split(",")[0]) <= 3600
    webp = await anonymous.get(path, headers={"Accept": "image/webp"})
    assert webp.content_type == "image/webp"
    other_last = "0" if path[-1] != "0" else "1"  # a signature that differs in its last digit
    for tampered in (path.replace("w100", "w101"), path.replace("q80", "q81"), path[:-1] + other_last):
        refused = await anonymous.get(tampered)
        assert refused.status == 403 and (await refused.json())["error"] == "invalid_link", tampered
    both = await api.get("/images/photo/url", params={"w": "100", "rendition": "256"})
    assert both.status == 400
    twice = await api.get("/images/photo/url?w=100&w=4000")
    assert twice.status == 400 and "given once" in (await twice.json())["message"]
    await ready_image(api, backend, "photo", 400, 400)  # replaced: the link was for the old upload
    gone = await anonymous.get(path)
    assert gone.status == 404 and (await gone.json())["error"] == "image_changed"


async def test_the_listing_offers_the_gallery_a_srcset_of_what_is_stored_and_following_it_makes_nothing(
    backend: Backend, make_client: ClientFactory
) -> None:
    renditions = (RenditionSpec(256), RenditionSpec(1024))
    settings = dataclasses.replace(
        backend.settings, imaging=dataclasses.replace(backend.settings.imaging, renditions=renditions)
    )
    backend = dataclasses.replace(backend, settings=settings)
    api = await make_client(settings)
    anonymous = await make_client(settings, user=None)
    await ready_image(api, backend, "photo", 1280, 960)
    before = await backend.tables.users.get({"user_id": USER})
    [listed] = (await (await api.get("/images")).json())["images"]
    candidates = [part.strip().rsplit(" ", 1) for part in listed["thumbnail_srcset"].split(",")]
    assert [width for _, width in candidates] == ["256w", "1024w"]
    for url, width in candidates:
        got = await anonymous.get(url.removeprefix(f"http://127.0.0.1:{api.port}"))
        assert got.status == 200 and decode(await got.read()).width == int(width[:-1])
    # Nothing was made or charged for the gallery.
    assert await stored_variants(backend, "photo") == []
    assert await backend.tables.users.get({"user_id": USER}) == before


async def test_racing_deletes_give_the_bytes_back_once(backend: Backend, make_client: ClientFactory) -> None:
    api = await make_client(backend.settings)
    users = backend.tables.users
    before = int(((await users.get({"user_id": USER})) or {}).get("bytes_used", 0))
    await ready_image(api, backend, "photo", 640, 480)
    for width in (100, 200):
        assert (await api.get("/images/photo/variant", params={"w": str(width)})).status == 200
    answers = await asyncio.gather(*(api.delete("/images/photo") for _ in range(4)))
    assert [a.status for a in answers] == [204] * 4
    await api.server.app[VARIANTS].idle()  # a variant still being stored gives its bytes back too
    assert await stored_variants(backend, "photo") == []
    assert int((await users.get({"user_id": USER})).get("bytes_used", 0)) == before


async def test_a_variant_of_a_replaced_original_is_neither_kept_nor_counted(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    app, users = api.server.app, backend.tables.users
    await ready_image(api, backend, "photo", 640, 480)
    ref = ImageRef.of(USER, "photo")
    old = await app[RECORDS].read(ref)
    assert old is not None
    await ready_image(api, backend, "photo", 300, 300)
    used = int((await users.get({"user_id": USER}))["bytes_used"])
    spec, _ = parse_variant({"w": "50"}, "", backend.settings.variants)
    key = ref.variant_key(old.source_etag, spec.name)
    with pytest.raises(ImageChanged):  # asked for with the record read before the replacement
        await app[VARIANTS].ensure(ref, old, spec, key)
    with pytest.raises(ImageChanged):  # made while the image was being replaced
        await app[VARIANTS]._store(ref, old.source_etag, key, spec, b"made from the old original", {})
    assert await stored_variants(backend, "photo") == []
    assert int((await users.get({"user_id": USER}))["bytes_used"]) == used


async def test_busy_slow_and_over_quota_variants_are_refused(
    backend: Backend, make_client: ClientFactory
) -> None:
    busy = await make_client(with_variants(backend.settings, max_waiting=0, workers=1))
    await ready_image(busy, backend, "photo", 640, 480)
    answers = await asyncio.gather(*(busy.get(f"/images/photo/variant?w={w}") for w in (100, 101, 102)))
    assert sorted(a.status for a in answers)[0] == 200 and 503 in {a.status for a in answers}
    refused = next(a for a in answers if a.status == 503)
    assert (await refused.json())["error"] == "variants_busy" and refused.headers["Retry-After"]

    slow = await make_client(with_variants(backend.settings, timeout=0.1))
    await ready_image(slow, backend, "big", 3000, 2000)
    late = await slow.get("/images/big/variant", params={"w": "3000", "format": "avif"})  # seconds
    assert late.status == 503 and (await late.json())["error"] == "variant_timeout"
    # A dependency's 503 asks for IMGSVC_RETRY_AFTER seconds (2 by default), as documented.
    assert late.headers["Retry-After"] == str(backend.settings.web.retry_after) == "2"

    users = backend.tables.users
    used = int((await users.get({"user_id": USER}))["bytes_used"])
    accounts = dataclasses.replace(backend.settings.accounts, quota_bytes=used + 100)
    full = await make_client(dataclasses.replace(backend.settings, accounts=accounts))
    over = await full.get("/images/photo/variant", params={"w": "300"})
    assert over.status == 413 and (await over.json())["error"] == "quota_bytes_exceeded"
    assert not [k for k in await stored_variants(backend, "photo") if "w300" in k]
    assert int((await users.get({"user_id": USER}))["bytes_used"]) == used

    # Within the quota: stored, and counted with the record in one transaction.
    accounts = dataclasses.replace(backend.settings.accounts, quota_bytes=used + 10**6)
    roomy = await make_client(dataclasses.replace(backend.settings, accounts=accounts))
    fits = await roomy.get("/images/photo/variant", params={"w": "40"})
    assert fits.status == 200
    await roomy.server.app[VARIANTS].idle()
    assert [k for k in await stored_variants(backend, "photo") if "w40" in k]
    assert int((await users.get({"user_id": USER}))["bytes_used"]) == used + len(await fits.read())


async def test_variant_counters_are_freed_once_whichever_write_records_the_new_original_first(
    backend: Backend,
) -> None:
    """The consumer can record a new original's result before its upload records the upload:
    the first of the two writes to see counters of the old original frees them, the other none."""
    records = RecordStore(backend.tables.images)
    ref = ImageRef.of(USER, "raced")

    async def current(etag: str) -> str:
        return etag

    for consumer_first in (True, False):
        first = await records.record_upload(ref, '"e0"', {"sha256": "0"}, lambda: current('"e0"'))
        assert first.freed_variant_bytes == 0
        assert await records.add_variant(ref, '"e0"', "v1", 1000) is Counted.COUNTED
        # not of the record's original
        assert await records.add_variant(ref, '"e9"', "v1", 5) is Counted.CHANGED
        writes = [
            lambda: records.record_result(ref, '"e1"', None, CorruptImage("x"), lambda: current('"e1"')),
            lambda: records.record_upload(ref, '"e1"', {"sha256": "1"}, lambda: current('"e1"')),
        ]
        freed = [
            (await write()).freed_variant_bytes for write in (writes if consumer_first else writes[::-1])
        ]
        assert freed == [1000, 0]
        record = await records.read(ref)
        assert record is not None and record.variant_bytes == 0 and record.variant_count == 0
        # the new original's count starts afresh
        assert await records.add_variant(ref, '"e1"', "v1", 10) is Counted.COUNTED
        await records.delete(ref)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif", "png", "auto"])
@pytest.mark.parametrize("upscale", [False, True])
@pytest.mark.parametrize(
    "box", [{"w": "100"}, {"h": "100"}, {"w": "100", "h": "80"}, {"w": "100", "h": "80", "fit": "fill"}]
)
def test_every_signed_name_reads_back_as_the_variant_it_was_made_for(
    fmt: str, upscale: bool, box: dict[str, str]
) -> None:
    limits = Settings.from_env({}).variants
    crops = (
        [{"fit": "cover", "crop": c} for c in ("centre", "attention", "entropy", "focal")]
        if "h" in box
        else [{}]
    )
    for crop in crops if "fit" not in box else [{}]:
        query = {**box, **crop, "format": fmt, **({"upscale": "true"} if upscale else {})}
        spec, negotiated = parse_variant(query, "", limits)
        back = parse_link_name(spec.link_name(negotiated), "", limits)
        assert back is not None and back[0].name == spec.name and back[1] == negotiated, query


async def test_operations_are_made_stored_and_named_once_on_each_backend(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    await ready_image(api, backend, "photo", 640, 480)
    query = {"w": "100", "h": "100", "fit": "pad", "bg": "#00f", "rotate": "90", "crop": "0,0,320,480"}
    first = await api.get("/images/photo/variant", params=query)
    assert first.status == 200, await first.text()
    padded = decode(await first.read())
    assert padded.size == (100, 100) and padded.getpixel((2, 50))[2] > 200  # blue either side
    # Another spelling (order, case, dpr) is the same stored variant.
    again = await api.get(
        "/images/photo/variant",
        params={
            "crop": "0,0,320,480",
            "rotate": "90",
            "bg": "0000FF",
            "fit": "pad",
            "h": "50",
            "w": "50",
            "dpr": "2",
        },
    )
    assert again.headers["ETag"] == first.headers["ETag"]
    await api.server.app[VARIANTS].idle()
    (key,) = await stored_variants(backend, "photo")
    assert key.endswith("/w100-h100-pad-crop0_0_320_480-rot90-bg0000ff-q80.jpg")
    for query_string, says in {
        "w=10&crop=640,0,10,10": "starts outside the 640x480 image",
        "w=10&blur=60": "blur must be a number from 0.3 to 50",
        "w=10&bg=transparent": "bg with transparency needs format png, webp or avif",
    }.items():
        refused = await api.get(f"/images/photo/variant?{query_string}")
        body = await refused.json()
        assert refused.status == 400 and body["error"] == "invalid_field" and says in body["message"], body
