"""`crop=faces`: the crop centred on the faces OpenCV finds in a real photograph, and libvips'
`attention` where there is none."""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageStat

from config.settings import Settings
from pipeline.imaging import faces
from pipeline.imaging.renditions import make_variant
from pipeline.imaging.variants import parse_variant
from tests.support.images import decode, jpeg_bytes
from tests.support.photos import astronaut

SETTINGS = Settings.from_env({})


def variant(data: bytes, **query: str) -> Image.Image:
    spec, _ = parse_variant(query, "", SETTINGS.variants)
    return decode(make_variant(data, spec, SETTINGS.imaging, SETTINGS.variants).data)


def difference(a: Image.Image, b: Image.Image) -> float:
    return float(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean[0])


def test_the_astronaut_s_face_is_found_where_it_is() -> None:
    import pyvips

    x, y = faces.focal_point(pyvips.Image.new_from_buffer(astronaut(), ""))  # type: ignore[misc]
    assert 0.35 < x < 0.5 and 0.15 < y < 0.35  # her face: left of centre, in the upper third


def test_a_crop_on_faces_keeps_the_face_where_a_centred_crop_loses_it() -> None:
    """The astronaut at the right of a wide grey frame: a square crop of the frame's middle is
    mostly grey, the crop on faces is the photo."""
    photo = Image.open(io.BytesIO(astronaut())).convert("RGB")
    frame = Image.new("RGB", (1536, 512), (128, 128, 128))
    frame.paste(photo, (1024, 0))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=92)
    query = {"w": "256", "h": "256", "fit": "cover", "format": "png"}
    on_faces = variant(out.getvalue(), **query, crop="faces")
    centred = variant(out.getvalue(), **query, crop="centre")
    expected = photo.resize((256, 256))
    assert on_faces.size == centred.size == (256, 256)
    assert difference(on_faces, expected) < 25 < difference(centred, expected)


def test_without_a_face_the_crop_is_attention_s() -> None:
    plain = jpeg_bytes(640, 480)
    query = {"w": "100", "h": "100", "fit": "cover", "format": "png"}
    assert (
        variant(plain, **query, crop="faces").tobytes() == variant(plain, **query, crop="attention").tobytes()
    )


def test_crop_faces_is_a_cover_crop_with_a_name_of_its_own() -> None:
    spec, _ = parse_variant({"w": "300", "h": "200", "fit": "cover", "crop": "faces"}, "", SETTINGS.variants)
    assert spec.name == "w300-h200-cover-faces-q80.jpg"
