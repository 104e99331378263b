"""The functions a worker process runs, reachable without importing the decoders.

A process pool pickles the function it runs by module and name. Naming `pipeline.imaging`
there would make the parent import it to pickle the reference, and with it libvips; these
trampolines live in a module that imports nothing heavy, and load imaging only when called,
which happens in the worker (or, by design, in the Lambda handler's own process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import ImagingSettings, VariantSettings
    from pipeline.results import Engine, RenditionResult, VariantImage
    from pipeline.variants import VariantSpec


def make_renditions(data: bytes, imaging: ImagingSettings, engine: Engine | None = None) -> RenditionResult:
    """`pipeline.imaging.make_renditions`, imported in the process that runs it."""
    from pipeline.imaging import make_renditions as run

    return run(data, imaging, engine)


def make_variant(
    data: bytes, spec: VariantSpec, imaging: ImagingSettings, limits: VariantSettings
) -> VariantImage:
    """`pipeline.imaging.make_variant`, imported in the process that runs it."""
    from pipeline.imaging import make_variant as run

    return run(data, spec, imaging, limits)


def configure_worker(threads: int) -> None:
    """`pipeline.imaging.configure_worker`: bound the decoders' threads in this process."""
    from pipeline.imaging import configure_worker as configure

    configure(threads)
