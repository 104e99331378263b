"""Where the faces are, for `crop=faces`: OpenCV's Haar cascade (the frontal-face model that
ships inside `opencv-python-headless`, so nothing is downloaded at run time) on a small grey
copy of the original, in the worker that makes the variant.

The copy is `DETECT_SIDE` pixels on its long side and faces under an eighth of that are not
looked for: measured here (BENCHMARKS.md), detection then takes about 16 ms whatever the
original's size, where a 320 px copy or faces down to a twelfth took 25-45 ms. A group photo's
small faces are missed and the crop falls back to libvips' `attention`, as it does without faces.

OpenCV is the `faces` extra (`pip install 'image-service[faces]'`; the container image and the
tests have it): `available()` says whether this installation has it, without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

#: The long side of the copy faces are looked for in, pixels.
DETECT_SIDE = 256
#: The smallest face looked for, as a fraction of the copy's long side.
MIN_FACE = 1 / 8
#: The cascade: of OpenCV's frontal-face models, the one that found the test photo's face alone,
#: fastest (`alt2`; `default` also found a second, false one).
CASCADE = "haarcascade_frontalface_alt2.xml"


@functools.cache
def available() -> bool:
    """Whether OpenCV is installed (looked up, not imported: the web process checks requests)."""
    return importlib.util.find_spec("cv2") is not None


@functools.cache
def _detector() -> Any:
    import cv2

    cv2.setNumThreads(1)  # a worker has one core's share: OpenCV would take every core
    return cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)  # type: ignore[attr-defined]


def focal_point(image: Any) -> tuple[float, float] | None:
    """The centre of the faces in a libvips image (upright), as fractions of its width and height:
    the middle of the box around every face found, or None if there is none."""
    small = image.thumbnail_image(DETECT_SIDE, height=DETECT_SIDE)
    if small.hasalpha():
        small = small.flatten()
    grey = small.colourspace("b-w").cast("uchar")
    if grey.bands > 1:
        grey = grey.extract_band(0)
    import cv2

    pixels = cv2.equalizeHist(grey.numpy())
    least = max(12, round(max(grey.width, grey.height) * MIN_FACE))
    found = _detector().detectMultiScale(pixels, scaleFactor=1.2, minNeighbors=4, minSize=(least, least))
    if len(found) == 0:
        return None
    left = min(int(x) for x, _, _, _ in found)
    top = min(int(y) for _, y, _, _ in found)
    right = max(int(x + w) for x, _, w, _ in found)
    bottom = max(int(y + h) for _, y, _, h in found)
    return (left + right) / 2 / grey.width, (top + bottom) / 2 / grey.height
