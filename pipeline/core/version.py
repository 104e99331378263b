"""The service's version, from its installed package metadata (one number, in pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGE = "image-service"


def service_version() -> str:
    """The installed version; `unknown` when run from a checkout that was never installed."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"
