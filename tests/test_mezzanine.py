"""The mezzanine (`IMGSVC_MEZZANINE`): a smaller copy of a large original, made with its
renditions, that the variants fitting inside it decode instead of the original."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from config.settings import MEZZANINE, ImagingSettings, Settings, VariantSettings
from pipeline.core.layout import ImageRef
from pipeline.imaging.operations import Operations
from pipeline.imaging.renditions import make_renditions
from pipeline.imaging.variants import StrippedOriginal, VariantSpec, from_mezzanine
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import USER

LIMITS = VariantSettings()
SIDE = 1024


def with_mezzanine(settings: Settings, side: int = SIDE) -> Settings:
    return dataclasses.replace(settings, imaging=dataclasses.replace(settings.imaging, mezzanine=side))


def saved(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def red_at(image: Image.Image) -> bool:
    """Whether the middle of `image` is red (the originals here are grey gradients)."""
    r, g, b = image.getpixel((image.width // 2, image.height // 2))  # type: ignore[misc]
    return r > 240 and g < 16 and b < 16


# Which originals get one --------------------------------------------------------------------------


def test_a_large_opaque_original_gets_a_mezzanine_and_keeps_its_renditions() -> None:
    imaging = ImagingSettings(mezzanine=SIDE)
    result = make_renditions(jpeg_bytes(2400, 1600), imaging)
    made = {r.spec.name: r for r in result.renditions}
    assert set(made) == {"256", MEZZANINE}
    mezzanine = made[MEZZANINE]
    assert (mezzanine.width, mezzanine.height) == (1024, 683)
    shown = decode(mezzanine.data)
    assert shown.format == "JPEG" and shown.size == (1024, 683) and "exif" not in shown.info
    # The renditions are what they are without one.
    assert (made["256"].width, made["256"].height) == (256, 171)


def test_small_transparent_and_animated_originals_get_none() -> None:
    imaging = ImagingSettings(mezzanine=SIDE)
    small = jpeg_bytes(1500, 1000)  # under 1.5 times the mezzanine: it would save little
    transparent = saved(Image.new("RGBA", (2400, 1600), (10, 20, 30, 128)), "PNG")
    frames = [Image.new("RGB", (1600, 1600), colour) for colour in ("red", "blue")]
    animated = saved(frames[0], "GIF", save_all=True, append_images=frames[1:])
    for data in (small, transparent, animated):
        assert [r.spec.name for r in make_renditions(data, imaging).renditions] == ["256"]
    # Off by default.
    assert [r.spec.name for r in make_renditions(jpeg_bytes(2400, 1600), ImagingSettings()).renditions] == [
        "256"
    ]


# Which variants read it ---------------------------------------------------------------------------


def test_variants_inside_it_read_it_and_larger_ones_the_original() -> None:
    original, mezzanine = (4000, 3000), (2048, 1536)
    inside = VariantSpec(800, None)
    assert from_mezzanine(inside, original, mezzanine, LIMITS) == inside
    assert from_mezzanine(VariantSpec(2048, 1536), original, mezzanine, LIMITS) is not None
    assert from_mezzanine(VariantSpec(2100, None), original, mezzanine, LIMITS) is None
    # Enlarging: only where the box still fits in the mezzanine without enlarging it.
    assert from_mezzanine(VariantSpec(1000, None, upscale=True), original, mezzanine, LIMITS) is not None
    assert from_mezzanine(VariantSpec(3000, None, upscale=True), original, mezzanine, LIMITS) is None
    # A rectangle in the original's pixels is scaled to the mezzanine's.
    cut = VariantSpec(200, None, ops=Operations(region=(1000, 1000, 400, 400)))
    scaled = from_mezzanine(cut, original, mezzanine, LIMITS)
    assert scaled is not None and scaled.ops.region == (512, 512, 205, 205)
    # A small rectangle needs the original's pixels.
    assert from_mezzanine(VariantSpec(400, None, ops=cut.ops), original, mezzanine, LIMITS) is None
    # A trim's box depends on what it finds; a stored original is the original's own bytes.
    assert (
        from_mezzanine(VariantSpec(200, None, ops=Operations(trim=10)), original, mezzanine, LIMITS) is None
    )
    assert from_mezzanine(StrippedOriginal(None, None), original, mezzanine, LIMITS) is None
    # A padded box whose picture would need more than the mezzanine has.
    assert from_mezzanine(VariantSpec(3000, 3000, fit="pad"), original, mezzanine, LIMITS) is None


@given(
    width=st.integers(1600, 12000),
    aspect=st.floats(0.2, 5.0),
    w=st.one_of(st.none(), st.integers(1, 4000)),
    h=st.one_of(st.none(), st.integers(1, 4000)),
    fit=st.sampled_from(["contain", "cover", "fill", "pad"]),
    upscale=st.booleans(),
    region=st.one_of(st.none(), st.tuples(*[st.integers(0, 6000)] * 2, *[st.integers(1, 6000)] * 2)),
)
def test_what_the_mezzanine_makes_is_the_size_the_original_would_give(
    width: int, aspect: float, w: int | None, h: int | None, fit: str, upscale: bool, region: Any
) -> None:
    height = max(1, round(width / aspect))
    if w is None and h is None:
        w = 100
    scale = SIDE / max(width, height)
    mezzanine = (max(1, round(width * scale)), max(1, round(height * scale)))
    spec = VariantSpec(w, h, fit=fit, upscale=upscale, ops=Operations(region=region))
    scaled = from_mezzanine(spec, (width, height), mezzanine, LIMITS)
    if scaled is None:
        return
    wanted = spec.box(width, height, LIMITS.max_side, LIMITS.max_pixels)
    assert scaled.box(*mezzanine, LIMITS.max_side, LIMITS.max_pixels) == wanted
    # Never more pixels than the mezzanine has: nothing is enlarged from it.
    assert not scaled.upscale
    source = scaled.ops.source_size(*mezzanine)
    assert fit == "pad" or min(wanted[0] / source[0], wanted[1] / source[1]) <= 1.0


# On both backends ----------------------------------------------------------------------------------


async def test_variants_are_made_of_the_mezzanine_while_it_is_of_the_current_original(
    backend: Backend, make_client: ClientFactory
) -> None:
    settings = with_mezzanine(backend.settings)
    backend = dataclasses.replace(backend, settings=settings)
    api = await make_client(settings)
    assert (await api.put("/images/big", data=jpeg_bytes(2400, 1600))).status == 202
    assert (await consume(backend)).get("ready") == 1
    shown = await (await api.get("/images/big")).json()
    assert MEZZANINE not in str(shown)  # never shown, never served
    ref = ImageRef.of(USER, "big")
    key = ref.rendition_key(settings.imaging.mezzanine_spec)  # type: ignore[arg-type]
    dest = settings.aws.dest_bucket
    meta, stored = await backend.storage.read(dest, key, 10**8)
    etag = (await backend.storage.head(settings.aws.source_bucket, ref.source_key)).etag
    assert decode(stored).size == (1024, 683) and meta.metadata["source-etag"] == etag.strip('"')
    # Made of the mezzanine, as it says: a red one with the same tag makes a red variant.
    red = saved(Image.new("RGB", (1024, 683), (255, 0, 0)), "JPEG")
    await backend.storage.put(dest, key, red, "image/jpeg", meta.metadata)

    async def variant(width: int) -> Image.Image:
        response = await api.get("/images/big/variant", params={"w": str(width), "format": "png"})
        assert response.status == 200, await response.text()
        return decode(await response.read()).convert("RGB")

    small = await variant(300)
    assert small.size == (300, 200) and red_at(small)
    # Larger than the mezzanine: the original (a grey gradient), at its own size.
    large = await variant(1600)
    assert large.size == (1600, 1067) and not red_at(large)
    # A mezzanine of another original is not read.
    await backend.storage.put(dest, key, red, "image/jpeg", {"source-etag": "0" * 32})
    other = await variant(301)
    assert not red_at(other)
    # Gone (gc, an operator): the original.
    await backend.storage.delete_many(dest, [key])
    assert not red_at(await variant(302))
    # Deleting the image takes its mezzanine with it.
    await backend.storage.put(dest, key, red, "image/jpeg", meta.metadata)
    assert (await api.delete("/images/big")).status in (200, 204)
    assert await backend.storage.etag_of(dest, key) is None
