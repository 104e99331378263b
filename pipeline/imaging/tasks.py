"""The functions a worker process runs, reachable without importing the decoders.

A process pool pickles the function it runs by module and name. Naming `pipeline.imaging.renditions`
there would make the parent import it to pickle the reference, and with it libvips; these
trampolines live in a module that imports nothing heavy, and load imaging only when called,
which happens in the worker (or, by design, in the Lambda handler's own process).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import ImagingSettings, VariantSettings
    from pipeline.core.originals import Destination, Fetched, Original
    from pipeline.core.results import Engine, RenditionResult, VariantImage
    from pipeline.imaging.variants import VariantSpec


def make_renditions(data: bytes, imaging: ImagingSettings, engine: Engine | None = None) -> RenditionResult:
    """`pipeline.imaging.renditions.make_renditions`, imported in the process that runs it."""
    from pipeline.imaging.renditions import make_renditions as run

    return run(data, imaging, engine)


def renditions_of(original: Original, imaging: ImagingSettings, dest: Destination | None = None) -> Fetched:
    """Read the original here (`pipeline.core.originals`), hash it, make its renditions and put them
    into `dest` (where given, and when the original came from S3)."""
    from pipeline.core.originals import fetched
    from pipeline.imaging.renditions import make_renditions as run

    return fetched(original, lambda data: run(data, imaging), dest)


def variant_of(
    original: Original,
    etag: str,
    spec: VariantSpec,
    imaging: ImagingSettings,
    limits: VariantSettings,
    overlay: bytes | None = None,
    mezzanine: tuple[Original, VariantSpec] | None = None,
) -> VariantImage:
    """Read the original here and make the variant (with the watermark `overlay`, small, sent
    with the job), if it is still the original `etag` (`ImageChanged` if it was replaced since the
    record was read). With `mezzanine` (where it is, and the spec that makes the same variant of
    it: `pipeline.imaging.variants.from_mezzanine`), read that instead if it was made of `etag`;
    the original if it is gone or of another original (replaced meanwhile: the etag check then
    says so)."""
    from pipeline.core.errors import ImageChanged, NotFound
    from pipeline.core.originals import read
    from pipeline.imaging.renditions import make_variant as run

    if mezzanine is not None:
        try:
            meta, data = read(mezzanine[0])
        except NotFound:
            pass
        else:
            if meta.metadata.get("source-etag") == etag.strip('"'):
                return replace(run(data, mezzanine[1], imaging, limits, overlay), source="mezzanine")
    meta, data = read(original)
    if meta.etag != etag:
        raise ImageChanged()
    return run(data, spec, imaging, limits, overlay)


def configure_worker(threads: int) -> None:
    """`pipeline.imaging.renditions.configure_worker`: bound the decoders' threads in this process."""
    from pipeline.imaging.renditions import configure_worker as configure

    configure(threads)
