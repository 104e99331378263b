"""What an imaging worker sends back: plain dataclasses, importable without any image library.

The consumer, the records and the web tier handle results but never decode anything, so these
types live apart from `pipeline.imaging.renditions` (which loads libvips) and the parent process can
unpickle a worker's answer without importing a decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from config.settings import RenditionSpec
from pipeline.core.formats import ImageInfo

Engine = Literal["pyvips", "pillow"]


@dataclass(frozen=True)
class Rendition:
    """One encoded output image."""

    spec: RenditionSpec
    data: bytes
    width: int
    height: int
    #: The size of a rendition in storage already (copied there, or put there by the worker that
    #: made it): its `data` is then empty.
    stored_bytes: int | None = None

    @property
    def size(self) -> int:
        return self.stored_bytes if self.stored_bytes is not None else len(self.data)


@dataclass(frozen=True)
class RenditionResult:
    """Everything a worker sends back to the consumer."""

    info: ImageInfo
    engine: Engine
    renditions: tuple[Rendition, ...]
    seconds: float
    #: What a client shows before a thumbnail loads: {"blurhash": ..., "color": "#rrggbb"}.
    placeholder: dict[str, str] | None = None
    #: What the original says about itself (`pipeline.imaging.metadata`), for its owner.
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class VariantImage:
    """One on-demand variant, encoded, and what it cost."""

    data: bytes
    width: int
    height: int
    frames: int
    seconds: float
    #: What it was made from: the original, or its mezzanine (`ImagingSettings.mezzanine`).
    source: str = "original"
