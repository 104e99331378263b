"""Public images: permanent, unguessable, versioned URLs anyone may fetch and any CDN may keep,
on both backends. A private, replaced or deleted image's URLs answer 404 at once; nothing but
bytes is ever cacheable; anonymous clients get presets or variants the owner signed, never sizes
of their own choosing."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from config.settings import Settings
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import local_settings
from web.keys import ACCOUNTS
from web.public import IMMUTABLE

Client = TestClient[Any, Any]


def with_web(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, web=dataclasses.replace(settings.web, **changes))


async def anonymous(url: str, **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
    """GET as anybody: no key, no cookie."""
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response, await response.read()


async def public_image(
    api: Client, backend: Backend, image_id: str, data: bytes, **query: str
) -> dict[str, Any]:
    params = {"public": "true", **query}
    assert (await api.put(f"/images/{image_id}", data=data, params=params)).status == 202
    await consume(backend)
    body: dict[str, Any] = await (await api.get(f"/images/{image_id}")).json()
    assert body["status"] == "ready" and body["public"] is True
    return body


async def test_a_public_image_is_served_to_anyone_for_good(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    data = jpeg_bytes(640, 480)
    assert (await api.put("/images/priv", data=data)).status == 202  # private by default
    assert (await (await api.get("/images/priv")).json())["public"] is False
    body = await public_image(api, backend, "cat", data, file_name="my cat.jpg")
    urls = body["public_urls"]
    assert set(urls) == {"original", "256"}
    assert urls["original"].startswith(f"http://{api.host}:{api.port}/p/") and urls["original"].endswith(
        "/original.jpg"
    )
    token = urls["original"].split("/")[4]
    assert backend.settings.aws.source_bucket not in token and "cat" not in token and len(token) >= 22

    response, original = await anonymous(urls["original"])
    assert response.status == 200 and original == data
    assert response.headers["Cache-Control"] == IMMUTABLE
    assert response.headers["ETag"].startswith('"') and not response.headers["ETag"].startswith("W/")
    assert response.headers["Content-Disposition"].startswith('inline; filename="my cat.jpg"')
    assert "Vary" not in response.headers and "Set-Cookie" not in response.headers
    again, _ = await anonymous(urls["original"], **{"If-None-Match": response.headers["ETag"]})
    assert again.status == 304
    part, some = await anonymous(urls["original"], Range="bytes=0-99")
    assert part.status == 206 and some == data[:100]
    thumb, thumbnail = await anonymous(urls["256"])
    assert thumb.status == 200 and decode(thumbnail).size == (256, 192)
    assert thumb.headers["Cache-Control"] == IMMUTABLE

    for wrong in (
        urls["original"].replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")),  # tampered
        urls["original"].replace("/original.jpg", "/original.png"),
        urls["original"].rsplit("/", 1)[0] + "/w100-contain-q80.jpg",  # a size of the client's choosing
    ):
        refused, _ = await anonymous(wrong)
        assert refused.status == 404 and refused.headers["Cache-Control"] == "no-store", wrong


async def test_private_replaced_and_deleted_images_answer_404_at_once(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    first = jpeg_bytes(400, 300)
    urls = (await public_image(api, backend, "dog", first))["public_urls"]
    assert (await anonymous(urls["original"]))[0].status == 200

    private = await api.patch("/images/dog", json={"public": False})
    assert private.status == 200 and "public_urls" not in await private.json()
    assert (await anonymous(urls["original"]))[0].status == 404
    public_again = await (await api.patch("/images/dog", json={"public": True})).json()
    fresh = public_again["public_urls"]
    assert fresh["original"] != urls["original"]  # new URLs: the old ones never come back
    assert (await anonymous(urls["original"]))[0].status == 404
    assert (await anonymous(fresh["original"]))[0].status == 200

    second = jpeg_bytes(500, 300)
    assert (await api.put("/images/dog", data=second)).status == 202  # replaced, still public
    replaced = await (await api.get("/images/dog")).json()
    assert replaced["public"] is True and replaced["public_urls"]["original"] != fresh["original"]
    old, _ = await anonymous(fresh["original"])
    assert old.status == 404 and old.headers["Cache-Control"] == "no-store"  # never the new bytes
    pending, _ = await anonymous(replaced["public_urls"]["original"].rsplit("/", 1)[0] + "/256.jpg")
    assert pending.status == 404 and pending.headers["Cache-Control"] == "no-store"
    response, body = await anonymous(replaced["public_urls"]["original"])
    assert response.status == 200 and body == second

    assert (await api.delete("/images/dog")).status == 204
    assert (await anonymous(replaced["public_urls"]["original"]))[0].status == 404


async def test_variants_on_public_urls_are_presets_or_signed_by_the_owner(
    backend: Backend, make_client: ClientFactory
) -> None:
    variants = dataclasses.replace(
        backend.settings.variants,
        presets=(("card", (("fit", "cover"), ("format", "webp"), ("h", "100"), ("w", "100"))),
                 ("hero", (("format", "auto"), ("w", "300")))),
    )  # fmt: skip
    api = await make_client(dataclasses.replace(backend.settings, variants=variants))
    urls = (await public_image(api, backend, "owl", jpeg_bytes(800, 600)))["public_urls"]
    assert urls["card"].endswith("/card.webp") and urls["hero"].endswith("/hero.auto")
    card, data = await anonymous(urls["card"])
    assert (
        card.status == 200
        and decode(data).size == (100, 100)
        and card.headers["Content-Type"] == "image/webp"
    )
    assert card.headers["Cache-Control"] == IMMUTABLE and "Vary" not in card.headers
    hero, data = await anonymous(urls["hero"], Accept="image/avif,image/webp,*/*")
    assert hero.headers["Vary"] == "Accept" and hero.headers["Content-Type"] == "image/avif"

    signed = await (await api.get("/images/owl/url", params={"public": "true", "w": "120"})).json()
    assert signed["public"] is True and "?s=" in signed["url"]
    response, data = await anonymous(signed["url"])
    assert response.status == 200 and decode(data).size == (120, 90)
    forged, _ = await anonymous(signed["url"].replace("w120", "w121"))
    assert forged.status == 404
    rendition = await (await api.get("/images/owl/url", params={"public": "true"})).json()
    assert rendition["url"] == urls["256"]
    assert (await api.patch("/images/owl", json={"public": False})).status == 200
    refused = await api.get("/images/owl/url", params={"public": "true"})
    assert refused.status == 409 and (await refused.json())["error"] == "image_not_public"


async def test_visibility_is_set_at_upload_every_way(tmp_path: Any, make_client: ClientFactory) -> None:
    settings = local_settings(tmp_path / "d", IMGSVC_UPLOAD_MODES="api,presigned")
    api = await make_client(settings)
    form = aiohttp.FormData()
    form.add_field("file", jpeg_bytes(64, 48), filename="a.jpg", content_type="image/jpeg")
    form.add_field("public", "true")  # after the file: read once its bytes are through
    assert (await api.post("/images", data=form)).status == 202
    listed = (await (await api.get("/images")).json())["images"]
    assert [i["public"] for i in listed] == [True]
    reserved = await api.post(
        "/images/upload-url", json={"content_length": 1000, "content_type": "image/jpeg", "public": True}
    )
    assert reserved.status == 201 and (await reserved.json())["public"] is True
    bad = await api.put("/images/x?public=maybe", data=jpeg_bytes(8, 8))
    assert bad.status == 400 and "public" in (await bad.json())["message"]
    # The owner's default applies to new images only; a replacement keeps what it had.
    await api.server.app[ACCOUNTS].set_public_by_default(listed[0]["user_id"], True)
    assert (await (await api.put("/images/default", data=jpeg_bytes(8, 8))).json())["public"] is True
    assert (await api.put("/images/kept", data=jpeg_bytes(8, 8), params={"public": "false"})).status == 202
    assert (await (await api.put("/images/kept", data=jpeg_bytes(9, 9))).json())["public"] is False


async def test_a_deployment_may_forbid_public_images(tmp_path: Any, make_client: ClientFactory) -> None:
    open_ = await make_client(local_settings(tmp_path / "d"))
    urls = await (await open_.put("/images/p", data=jpeg_bytes(64, 48), params={"public": "true"})).json()
    assert urls["public"] is True
    closed = await make_client(local_settings(tmp_path / "d", IMGSVC_PUBLIC_IMAGES="off"))
    refused = await closed.put("/images/q", data=jpeg_bytes(64, 48), params={"public": "true"})
    assert refused.status == 403 and (await refused.json())["error"] == "public_images_disabled"
    assert (await closed.patch("/images/p", json={"public": True})).status == 403
    described = await (await closed.get("/images/p")).json()
    assert "public_urls" not in described
    original = urls["public_urls"]["original"].replace(f":{open_.port}/", f":{closed.port}/")
    assert (await anonymous(original))[0].status == 404  # served by the closed deployment: no


async def test_public_urls_point_at_the_delivery_host(tmp_path: Any, make_client: ClientFactory) -> None:
    settings = local_settings(tmp_path / "d", IMGSVC_DELIVERY_URL="https://cdn.example.com")
    api = await make_client(settings)
    body = await (await api.put("/images/d", data=jpeg_bytes(64, 48), params={"public": "true"})).json()
    assert body["public_urls"]["original"].startswith("https://cdn.example.com/p/")
    path = body["public_urls"]["original"].removeprefix("https://cdn.example.com")
    response, data = await anonymous(f"http://{api.host}:{api.port}{path}")  # what the CDN asks
    assert response.status == 200 and data == jpeg_bytes(64, 48)


def test_public_tokens_are_opened_only_by_their_deployment() -> None:
    from web.public import PublicUrls, new_nonce

    ours, theirs = PublicUrls(b"secret-one"), PublicUrls(b"secret-two")
    nonce = new_nonce()
    token = ours.token("ab11ed09-03da-4d77-9b8d-6d07b5db1e5e", "cat", nonce)
    assert ours.open(token) == ("ab11ed09-03da-4d77-9b8d-6d07b5db1e5e", "cat", nonce)
    assert theirs.open(token) is None
    assert ours.open(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert ours.open("x" * 40) is None and ours.open("") is None
    assert len(bytes.fromhex(nonce)) * 8 >= 96
