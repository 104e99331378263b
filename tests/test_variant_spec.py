"""Variant parameters: parsed strictly, brought to one canonical name, boxed within the limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from config.settings import ConfigError, Settings, VariantSettings
from pipeline.core.errors import InvalidField
from pipeline.core.layout import ImageRef, source_key_of
from pipeline.imaging.variants import (
    CROPS,
    FITS,
    FORMATS,
    PARAMETERS,
    VariantSpec,
    parse_link_name,
    parse_variant,
    preset_problem,
)

LIMITS = VariantSettings()
values = st.one_of(
    st.sampled_from(["0", "1", "64", "4096", "4097", "100", "-1", "1e3", "٣", " 5", "", "auto", "AUTO"]),
    st.sampled_from([*FITS, *CROPS, *FORMATS, "center", "jpg", "true", "false", "1", "0"]),
    # The operations' values: rectangles, angles, sigmas, colours, pixel ratios, in and out of range.
    st.sampled_from(["10,20,30,40", "0,0,0,5", "99999,1,1,1", "90", "270", "45", "0.3", "2.55", "50.1"]),
    st.sampled_from(["fff", "#00ff0080", "transparent", "ff00ff00", "12345", "4", "4.01", "1.5"]),
    st.text(max_size=12),
)


@given(
    st.lists(st.tuples(st.sampled_from([*PARAMETERS, "x", "W", "w "]), values), max_size=8),
    st.text(max_size=40),
)
def test_any_query_parses_within_limits_or_is_refused_as_invalid(
    pairs: list[tuple[str, str]], accept: str
) -> None:
    query = MultiDict(pairs)
    try:
        spec, negotiated = parse_variant(query, accept, LIMITS)
    except InvalidField as exc:
        assert exc.http_status == 400 and exc.message
        return
    assert spec.width or spec.height
    assert all(1 <= side <= LIMITS.max_side for side in (spec.width, spec.height) if side)
    assert spec.fit in FITS and spec.crop in CROPS and spec.format in FORMATS and 1 <= spec.quality <= 100
    assert spec.ops.rotate in (0, 90, 180, 270) and not (spec.ops.blur and spec.ops.sharpen)
    assert negotiated == (query.get("format", "").lower() == "auto")
    # The canonical name is a safe key segment, and names only what changes the pixels.
    assert spec.name.replace("-", "").replace(".", "").isalnum()
    assert parse_variant(_query_of(spec), "", LIMITS)[0] == spec
    # A signed link's name gives the same variant back (`auto` decided by the follower's Accept).
    linked = parse_link_name(spec.link_name(negotiated), accept, LIMITS)
    assert linked is not None and linked[0].name == spec.name and linked[1] == negotiated


def _query_of(spec: VariantSpec) -> dict[str, str]:
    query = {"fit": spec.fit, "format": spec.format, "q": str(spec.quality)}
    if spec.width:
        query["w"] = str(spec.width)
    if spec.height:
        query["h"] = str(spec.height)
    if spec.fit == "cover":
        query["crop"] = spec.crop
    if spec.upscale:
        query["upscale"] = "1"
    ops = spec.ops
    if ops.region:
        query["crop"] = ",".join(map(str, ops.region))
    query |= {"trim": str(ops.trim), "rotate": str(ops.rotate), "bg": ops.bg}
    query |= {"flip": str(ops.flip).lower(), "flop": str(ops.flop).lower()}
    query |= {name: f"{value:g}" for name, value in (("blur", ops.blur), ("sharpen", ops.sharpen)) if value}
    return query


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"w": "200"}, "w200-contain-q80.jpg"),
        ({"w": "200", "fit": "cover"}, "w200-contain-q80.jpg"),  # one side: every fit scales alike
        ({"w": "200", "h": "100", "fit": "cover", "crop": "center"}, "w200-h100-cover-centre-q80.jpg"),
        ({"h": "50", "format": "JPG", "q": "90", "upscale": "true"}, "h50-contain-q90-up.jpg"),
        ({"w": "10", "h": "10", "fit": "fill", "format": "webp"}, "w10-h10-fill-q80.webp"),
        ({"w": "10", "format": "png", "q": "5"}, "w10-contain.png"),  # lossless: no quality
        # Operations, in the order they are applied whatever the query's order; dpr folds into w.
        (
            {"blur": "1.50", "flop": "1", "rotate": "90", "crop": "1,2,3,4", "trim": "true", "w": "5"},
            "w5-contain-crop1_2_3_4-trim10-rot90-flop-blur1.5-q80.jpg",
        ),
        ({"w": "100", "h": "50", "dpr": "2", "fit": "pad", "bg": "#F00"}, "w200-h100-pad-bgff0000-q80.jpg"),
        ({"w": "100", "bg": "FFFFFFFF", "rotate": "0", "flip": "false"}, "w100-contain-q80.jpg"),
        ({"w": "100", "bg": "transparent", "format": "webp"}, "w100-contain-bgffffff00-q80.webp"),
        ({"w": "4000", "h": "4000", "dpr": "4"}, "w4096-h4096-contain-q80.jpg"),  # capped, shape kept
    ],
)
def test_spellings_of_one_variant_share_one_name(query: dict[str, str], name: str) -> None:
    assert parse_variant(query, "", LIMITS)[0].name == name


@given(
    st.integers(1, 60_000),
    st.integers(1, 60_000),
    st.one_of(st.none(), st.integers(1, 4096)),
    st.one_of(st.none(), st.integers(1, 4096)),
    st.sampled_from(FITS),
    st.booleans(),
)
def test_the_box_never_upscales_unless_asked_and_never_exceeds_the_request(
    width: int, height: int, w: int | None, h: int | None, fit: str, upscale: bool
) -> None:
    if w is None and h is None:
        w = 100
    spec = VariantSpec(w, h, fit if (w and h) else "contain", upscale=upscale)
    out_w, out_h = spec.box(width, height, LIMITS.max_side, LIMITS.max_pixels)
    assert out_w >= 1 and out_h >= 1
    if spec.fit == "pad":  # the canvas is the box: the image inside it is what must not grow
        in_w, in_h = spec.inside(width, height, (out_w, out_h))
        assert in_w <= out_w and in_h <= out_h
        if not upscale:
            assert in_w <= width and in_h <= height
    elif not upscale:
        assert out_w <= width and out_h <= height
    assert (w is None or out_w <= w) and (h is None or out_h <= h)
    # However long the side left to the aspect ratio (w=4096 of a 1x5000 strip, upscaled).
    assert max(out_w, out_h) <= LIMITS.max_side and out_w * out_h <= LIMITS.max_pixels


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"w": "1", "rotate": "45"}, "rotate must be one of 0, 90, 180, 270"),
        ({"w": "1", "blur": "0.1"}, "blur must be a number from 0.3 to 50"),
        ({"w": "1", "sharpen": "11"}, "sharpen must be a number from 0.3 to 10"),
        ({"w": "1", "blur": "1", "sharpen": "1"}, "blur and sharpen cannot be combined"),
        ({"w": "1", "bg": "red"}, "bg must be a colour"),
        ({"w": "1", "bg": "transparent"}, "bg with transparency needs format png, webp or avif"),
        ({"w": "1", "bg": "00000080", "format": "auto"}, "bg with transparency needs"),
        ({"w": "1", "trim": "101"}, "trim must be true, false or a threshold from 1 to 100"),
        ({"w": "1", "crop": "1,2,0,4"}, "width and height of at least 1 pixel"),
        ({"w": "1", "crop": "1,2,3"}, "crop must be one of"),
        ({"w": "1", "dpr": "5"}, "dpr must be a number from 1 to 4"),
        ({"w": "1", "flip": "yes"}, "flip must be true or false"),
    ],
)
def test_each_operation_refuses_what_is_out_of_its_range(query: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidField) as refused:
        parse_variant(query, "", LIMITS)
    assert says in refused.value.message


@pytest.mark.parametrize(
    ("fit", "box", "original", "out"),
    [
        ("cover", (1000, 500), (768, 576), (768, 384)),  # the box's shape, at the original's scale
        ("fill", (1000, 500), (768, 576), (768, 384)),
        ("contain", (1000, 500), (768, 576), (667, 500)),
        ("pad", (1000, 500), (768, 576), (1000, 500)),  # the canvas is the box
        ("cover", (300, 200), (768, 576), (300, 200)),
    ],
)
def test_cover_and_fill_keep_the_box_shape_without_upscaling(
    fit: str, box: tuple[int, int], original: tuple[int, int], out: tuple[int, int]
) -> None:
    assert VariantSpec(*box, fit).box(*original) == out


def test_a_rectangle_starting_outside_the_image_is_refused_with_its_size() -> None:
    spec = parse_variant({"w": "10", "crop": "800,0,10,10"}, "", LIMITS)[0]
    with pytest.raises(InvalidField, match="starts outside the 768x576 image"):
        spec.box(768, 576)
    # Past the edge, the rectangle is cut there; a quarter turn swaps what the box describes.
    assert parse_variant({"w": "100", "crop": "700,500,400,400"}, "", LIMITS)[0].box(768, 576) == (68, 76)
    assert parse_variant({"w": "100", "rotate": "90"}, "", LIMITS)[0].box(768, 576) == (100, 133)


def test_variant_keys_belong_to_their_original_and_its_etag() -> None:
    ref = ImageRef.of("eb2128f2-5c0a-4dd1-90a5-2f0e39db7aa3", "variants")
    key = ref.variant_key('"abc"', "w1-contain-q80.jpg")
    assert key.startswith(ref.variants_prefix("abc")) and key.startswith(ref.variants_prefix())
    assert source_key_of(key) == ref.source_key
    assert source_key_of(f"{ref.source_key}/256.jpg") == ref.source_key


def test_presets_take_operations_and_their_values_are_checked_as_the_api_starts() -> None:
    limits = Settings.from_env(
        {"IMGSVC_VARIANT_PRESETS": "avatar=96x96:pad:png:bg=transparent:dpr=2,soft=400:blur=4:rotate=90"}
    ).variants
    assert preset_problem(limits) is None
    assert parse_variant({"preset": "avatar"}, "", limits)[0].name == "w192-h192-pad-bgffffff00.png"
    assert parse_variant({"preset": "soft"}, "", limits)[0].name == "w400-contain-rot90-blur4-q80.jpg"
    wrong = Settings.from_env({"IMGSVC_VARIANT_PRESETS": "a=10,b=10:blur=99"}).variants
    assert (
        preset_problem(wrong)
        == "IMGSVC_VARIANT_PRESETS: b: blur must be a number from 0.3 to 50 (a sigma, in pixels)"
    )
    with pytest.raises(ConfigError, match="'tilt=3' is not a fit, crop, format, quality or operation"):
        Settings.from_env({"IMGSVC_VARIANT_PRESETS": "a=10:tilt=3"})
