"""Each variant operation done to real pixels (libvips, as a worker does it), decoded and looked
at: where a colour went, what size came out, what the background is."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
from PIL import Image, ImageFilter

from config.settings import Settings
from pipeline.core.errors import InvalidField
from pipeline.imaging.renditions import make_variant
from pipeline.imaging.variants import parse_variant
from tests.support.images import decode, jpeg_bytes

SETTINGS = Settings.from_env({})
RED, BLUE, GREEN, WHITE = (220, 20, 20), (20, 20, 220), (20, 200, 20), (255, 255, 255)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def quarters(width: int = 400, height: int = 300) -> bytes:
    """Red top-left, blue top-right, green bottom-left, white bottom-right (lossless)."""
    image = Image.new("RGB", (width, height), WHITE)
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(BLUE, (width // 2, 0, width, height // 2))
    image.paste(GREEN, (0, height // 2, width // 2, height))
    return encoded(image)


def variant(data: bytes, **query: str) -> Image.Image:
    spec, _ = parse_variant(query, "", SETTINGS.variants)
    made = make_variant(data, spec, SETTINGS.imaging, SETTINGS.variants)
    image = decode(made.data)
    assert image.size == (made.width, made.height)
    return image


def near(pixel: Any, colour: tuple[int, ...], slack: int = 40) -> bool:
    """Whether a pixel (as Pillow gives it: a tuple here) is within `slack` of `colour`."""
    return all(abs(a - b) <= slack for a, b in zip(pixel, colour, strict=False))


def corners(image: Image.Image) -> list[tuple[int, ...]]:
    """The colours a quarter in from each corner: top-left, top-right, bottom-left, bottom-right."""
    w, h = image.size
    rgb = image.convert("RGB")
    return [rgb.getpixel((x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("query", "size", "order"),
    [
        ({"w": "200"}, (200, 150), [RED, BLUE, GREEN, WHITE]),
        ({"w": "150", "rotate": "90"}, (150, 200), [GREEN, RED, WHITE, BLUE]),  # clockwise
        ({"w": "200", "rotate": "180"}, (200, 150), [WHITE, GREEN, BLUE, RED]),
        ({"h": "200", "rotate": "270"}, (150, 200), [BLUE, WHITE, RED, GREEN]),
        ({"w": "200", "flip": "true"}, (200, 150), [GREEN, WHITE, RED, BLUE]),  # top to bottom
        ({"w": "200", "flop": "true"}, (200, 150), [BLUE, RED, WHITE, GREEN]),  # left to right
        # w and h describe the result: a 300x100 cover of the turned image.
        ({"w": "300", "h": "100", "fit": "cover", "rotate": "90"}, (300, 100), None),
    ],
)
def test_rotations_and_mirrors_put_each_quarter_where_it_belongs(
    query: dict[str, str], size: tuple[int, int], order: list[tuple[int, int, int]] | None
) -> None:
    image = variant(quarters(), **query)
    assert image.size == size
    if order is not None:
        assert all(near(got, want) for got, want in zip(corners(image), order, strict=True)), corners(image)


def test_a_rectangle_is_cut_from_the_original_before_the_resize() -> None:
    blue_quarter = variant(quarters(), w="100", crop="200,0,200,150")
    assert blue_quarter.size == (100, 75) and all(near(c, BLUE) for c in corners(blue_quarter))
    # Running past the edge it is cut there; the rest of the query applies to what is left.
    edge = variant(quarters(), w="1000", crop="300,225,500,500", format="png")
    assert edge.size == (100, 75) and all(near(c, WHITE) for c in corners(edge))
    with pytest.raises(InvalidField, match="starts outside the 400x300 image"):
        variant(quarters(), w="10", crop="400,0,5,5")


def test_trim_removes_a_border_of_one_colour() -> None:
    framed = Image.new("RGB", (500, 400), (250, 250, 250))
    framed.paste(RED, (100, 50, 300, 350))  # 200 x 300 of red in a near-white frame
    trimmed = variant(encoded(framed), w="1000", trim="true", format="png")
    assert trimmed.size == (200, 300) and all(near(c, RED, 5) for c in corners(trimmed))
    # One colour all over: nothing to keep apart from it, so the image is kept whole.
    assert variant(encoded(Image.new("RGB", (64, 48), RED)), w="64", trim="20").size == (64, 48)


def test_pad_sets_the_whole_image_on_a_canvas_of_the_box() -> None:
    padded = variant(quarters(), w="300", h="300", fit="pad", bg="0000ff", format="png")
    assert padded.size == (300, 300)
    assert near(padded.getpixel((150, 10)), (0, 0, 255), 0) and near(
        padded.getpixel((150, 290)), (0, 0, 255), 0
    )
    assert near(padded.getpixel((75, 100)), RED) and near(
        padded.getpixel((225, 200)), WHITE
    )  # 300x225 inside
    # Without upscaling, a box larger than the original leaves the original its size.
    small = variant(quarters(40, 30), w="100", h="100", fit="pad", bg="transparent", format="webp")
    assert small.size == (100, 100) and small.mode == "RGBA"
    assert small.getpixel((2, 2))[3] == 0 and small.getpixel((40, 40))[3] == 255
    assert small.getchannel("A").getbbox() == (30, 35, 70, 65)


def test_blur_softens_and_sharpen_hardens_an_edge() -> None:
    halves = Image.new("L", (200, 100), 0)
    halves.paste(255, (100, 0, 200, 100))
    data = encoded(halves)

    def edge(image: Image.Image) -> int:
        """The steepest step between neighbours along the middle row."""
        row = [image.convert("L").getpixel((x, 50)) for x in range(image.width)]
        return max(abs(int(b) - int(a)) for a, b in itertools.pairwise(row))  # type: ignore[arg-type]

    plain, blurred = variant(data, w="200", format="png"), variant(data, w="200", blur="3", format="png")
    assert edge(blurred) < edge(plain) / 2
    soft = encoded(halves.filter(ImageFilter.GaussianBlur(2)))
    assert edge(variant(soft, w="200", sharpen="2", format="png")) > edge(
        variant(soft, w="200", format="png")
    )


def test_bg_is_what_transparency_is_flattened_onto_in_a_jpeg() -> None:
    clear = encoded(Image.new("RGBA", (60, 40), (0, 0, 0, 0)))
    assert near(variant(clear, w="60").getpixel((30, 20)), WHITE, 2)  # white unless given
    assert near(variant(clear, w="60", bg="ff8000").getpixel((30, 20)), (255, 128, 0), 3)
    assert variant(clear, w="60", bg="00000000", format="png").getpixel((30, 20))[3] == 0


def test_dpr_multiplies_the_box_and_cover_keeps_its_shape_without_upscaling() -> None:
    assert variant(quarters(), w="100", dpr="2").size == (200, 150)
    assert variant(quarters(), w="100", dpr="1.5").size == (150, 112)
    # 400x300 in a 1000x500 box: the box's 2:1, at the original's scale, for cover and fill alike.
    assert variant(quarters(), w="1000", h="500", fit="cover").size == (400, 200)
    assert variant(quarters(), w="1000", h="500", fit="fill").size == (400, 200)


def test_an_animation_operated_on_keeps_its_first_frame() -> None:
    frames = [Image.new("RGB", (80, 60), colour) for colour in (RED, BLUE, GREEN)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    kept = variant(out.getvalue(), w="80", format="webp")
    assert getattr(kept, "n_frames", 1) == 3
    turned = variant(out.getvalue(), w="60", rotate="90", format="webp")
    assert getattr(turned, "n_frames", 1) == 1 and turned.size == (60, 80)
    assert near(turned.convert("RGB").getpixel((30, 40)), RED)


@pytest.mark.parametrize("query", [{"rotate": "90"}, {"rotate": "270", "flip": "1"}, {"trim": "true"}])
def test_a_jpeg_decoded_at_a_reduced_scale_can_be_turned_mirrored_and_trimmed(query: dict[str, str]) -> None:
    """A shrink-on-load decode is read top to bottom: a turn must make it whole first (it failed,
    out of order, on JPEGs large enough to be decoded at 1/8)."""
    photo = jpeg_bytes(1600, 1200)
    image = variant(photo, w="150", **query)
    assert image.width == 150 and image.format == "JPEG"
