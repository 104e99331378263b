"""Settings of the image service: one frozen, typed object built from the environment.

May import: the standard library only (every process reads its settings first).
"""

from config.settings import (
    KNOWN_FORMATS,
    SEED_USER_IDS,
    AwsSettings,
    ConfigError,
    ConsumerSettings,
    ImagingSettings,
    RenditionSpec,
    Settings,
    WebSettings,
)

__all__ = [
    "KNOWN_FORMATS",
    "SEED_USER_IDS",
    "AwsSettings",
    "ConfigError",
    "ConsumerSettings",
    "ImagingSettings",
    "RenditionSpec",
    "Settings",
    "WebSettings",
]
