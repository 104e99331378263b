"""Real photographs the tests need, from packages that ship them: scikit-image's astronaut
(Eileen Collins, NASA: public domain), a face for `crop=faces`.

Read from scikit-image when it is installed (`make bench-install`), else from its wheel at the
lock file's version, downloaded once from the package index into `.bench-cache/` (14 MB, under
a second here) and read there: the suite does not install scikit-image and its dependencies
for one picture.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.support.settings import ROOT

CACHE = ROOT / ".bench-cache"
MEMBER = "skimage/data/astronaut.png"


@functools.cache
def astronaut() -> bytes:
    """The 512 x 512 astronaut photo, as PNG bytes."""
    if importlib.util.find_spec("skimage") is not None:
        import skimage

        return (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()
    with zipfile.ZipFile(_wheel()) as wheel:
        return wheel.read(MEMBER)


def _wheel() -> Path:
    pinned = re.search(r"^scikit-image==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned, "constraints.txt pins scikit-image (the bench extra)"
    CACHE.mkdir(exist_ok=True)
    found = sorted(CACHE.glob(f"scikit_image-{pinned[1]}-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:  # renamed whole: parallel tests never read half
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "-d", tmp, f"scikit-image=={pinned[1]}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (wheel,) = Path(tmp).glob("*.whl")
        target = CACHE / wheel.name
        os.replace(wheel, target)
    return target
