"""Variant parameters: parsed strictly, brought to one canonical name, boxed within the limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from config.settings import VariantSettings
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
)

LIMITS = VariantSettings()
values = st.one_of(
    st.sampled_from(["0", "1", "64", "4096", "4097", "100", "-1", "1e3", "٣", " 5", "", "auto", "AUTO"]),
    st.sampled_from([*FITS, *CROPS, *FORMATS, "center", "jpg", "true", "false", "1", "0"]),
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
    if not upscale:
        assert out_w <= width and out_h <= height
    assert (w is None or out_w <= w) and (h is None or out_h <= h)
    # However long the side left to the aspect ratio (w=4096 of a 1x5000 strip, upscaled).
    assert max(out_w, out_h) <= LIMITS.max_side and out_w * out_h <= LIMITS.max_pixels


def test_variant_keys_belong_to_their_original_and_its_etag() -> None:
    ref = ImageRef.of("eb2128f2-5c0a-4dd1-90a5-2f0e39db7aa3", "variants")
    key = ref.variant_key('"abc"', "w1-contain-q80.jpg")
    assert key.startswith(ref.variants_prefix("abc")) and key.startswith(ref.variants_prefix())
    assert source_key_of(key) == ref.source_key
    assert source_key_of(f"{ref.source_key}/256.jpg") == ref.source_key
