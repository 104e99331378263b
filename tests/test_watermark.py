"""Watermarks: the caller's, uploaded once with `PUT /watermark` and laid over variants with
`watermark=true`, and the deployment's (`watermark=site`) for presets; on both backends."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from config.settings import Settings
from pipeline.imaging.renditions import make_variant
from pipeline.imaging.variants import parse_variant, preset_problem
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode

Client = TestClient[Any, Any]
GREY, RED, BLUE = (128, 128, 128), (255, 0, 0), (0, 0, 255)


def png(size: tuple[int, int], colour: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA" if len(colour) == 4 else "RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def near(pixel: Any, colour: tuple[int, ...], slack: int = 30) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(pixel, colour, strict=False))


@pytest.mark.parametrize(
    ("gravity", "inside", "outside"),
    [
        ("south-east", (190, 140), (10, 10)),
        ("north-west", (10, 10), (190, 140)),
        ("centre", (100, 75), (10, 10)),
        ("east", (190, 75), (10, 75)),
    ],
)
def test_a_watermark_is_laid_where_its_gravity_says(
    gravity: str, inside: tuple[int, int], outside: tuple[int, int]
) -> None:
    settings = Settings.from_env({})
    query = {"w": "200", "watermark": "true", "gravity": gravity, "opacity": "1", "scale": "0.25"}
    spec, _ = parse_variant(query, "", settings.variants)
    made = make_variant(jpeg((400, 300), GREY), spec, settings.imaging, settings.variants, png((40, 40), RED))
    image = decode(made.data)
    assert image.size == (200, 150)
    assert near(image.getpixel(inside), RED) and near(image.getpixel(outside), GREY)
    # Half opaque: half the way from grey to red.
    half = parse_variant({**query, "opacity": "0.5"}, "", settings.variants)[0]
    blended = decode(
        make_variant(
            jpeg((400, 300), GREY), half, settings.imaging, settings.variants, png((40, 40), RED)
        ).data
    )
    assert near(blended.getpixel(inside), (192, 64, 64))


def test_placing_a_watermark_needs_one_and_each_value_its_range() -> None:
    limits = Settings.from_env({}).variants
    for query, says in (
        ({"w": "9", "gravity": "north"}, "gravity places a watermark"),
        ({"w": "9", "watermark": "yes"}, "watermark must be true"),
        ({"w": "9", "watermark": "true", "opacity": "2"}, "opacity must be a number from 0.05 to 1"),
        ({"w": "9", "watermark": "true", "scale": "0"}, "scale must be a number from 0.05 to 1"),
        ({"w": "9", "watermark": "true", "gravity": "up"}, "gravity must be one of centre, north"),
    ):
        with pytest.raises(Exception, match=says):
            parse_variant(query, "", limits)
    no_site = Settings.from_env({"IMGSVC_VARIANT_PRESETS": "m=100:watermark=site"}).variants
    assert "needs IMGSVC_VARIANT_WATERMARK_FILE" in str(preset_problem(no_site))


async def _image(api: Client, backend: Backend) -> None:
    assert (await api.put("/images/photo", data=jpeg((400, 300), GREY))).status == 202
    assert (await consume(backend)).get("ready") == 1


async def test_the_owner_s_watermark_is_uploaded_once_and_laid_over_variants(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    await _image(api, backend)
    query = {"w": "200", "watermark": "true", "opacity": "1", "gravity": "north-west"}
    unset = await api.get("/images/photo/variant", params=query)
    assert unset.status == 404 and (await unset.json())["error"] == "watermark_not_set"
    put = await api.put("/watermark", data=png((40, 40), (*RED, 255)))
    assert put.status == 200, await put.text()
    mark = await put.json()
    assert (mark["format"], mark["width"], mark["height"]) == ("png", 40, 40) and mark["digest"]
    assert await (await api.get("/watermark")).json() == mark
    first = await api.get("/images/photo/variant", params=query)
    assert first.status == 200, await first.text()
    assert near(decode(await first.read()).getpixel((10, 10)), RED)
    # A signed link to it is made with the owner's watermark when followed.
    link = await (await api.get("/images/photo/url", params=query)).json()
    assert "-wm-" in link["variant"]
    async with api.session.get(link["url"]) as followed:
        assert near(decode(await followed.read()).getpixel((10, 10)), RED)
    # A new watermark: a new variant (its name holds the watermark's digest).
    assert (await api.put("/watermark", data=png((40, 40), BLUE))).status == 200
    second = await api.get("/images/photo/variant", params=query)
    assert second.headers["ETag"] != first.headers["ETag"]
    assert near(decode(await second.read()).getpixel((10, 10)), BLUE)
    assert (await api.delete("/watermark")).status == 204
    assert (await api.get("/watermark")).status == 404
    assert (await api.get("/images/photo/variant", params=query)).status == 404


async def test_a_watermark_that_is_no_image_or_too_large_is_refused(
    backend: Backend, make_client: ClientFactory
) -> None:
    small = dataclasses.replace(
        backend.settings, variants=dataclasses.replace(backend.settings.variants, watermark_max_bytes=2048)
    )
    api = await make_client(small)
    refused = await api.put("/watermark", data=b"not an image at all")
    assert refused.status == 415, await refused.text()
    big = Image.effect_noise((200, 200), 64).convert("RGB")
    out = io.BytesIO()
    big.save(out, "PNG")
    too_large = await api.put("/watermark", data=out.getvalue())
    assert too_large.status == 413 and (await too_large.json())["error"] == "too_large"
    assert (await api.get("/watermark")).status == 404


async def test_the_deployment_s_watermark_is_laid_over_its_presets(
    backend: Backend, make_client: ClientFactory, tmp_path: Path
) -> None:
    site = tmp_path / "site.png"
    site.write_bytes(png((30, 30), BLUE))
    settings = dataclasses.replace(
        backend.settings,
        variants=dataclasses.replace(
            backend.settings.variants,
            watermark_file=str(site),
            presets=(
                (
                    "marked",
                    (("w", "200"), ("watermark", "site"), ("opacity", "1"), ("gravity", "south-west")),
                ),
            ),
        ),
    )
    api = await make_client(settings)
    await _image(api, backend)
    marked = await api.get("/images/photo/variant", params={"preset": "marked"})
    assert marked.status == 200, await marked.text()
    image = decode(await marked.read())
    assert near(image.getpixel((10, 140)), BLUE) and near(image.getpixel((190, 10)), GREY)
