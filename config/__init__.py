"""Settings of the image service: one frozen, typed object built from the environment."""

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
