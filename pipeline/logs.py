"""Logging set-up: one line per event, `key=value` pairs after the message."""

from __future__ import annotations

import logging
import sys


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")


def configure_logging(level: str = "INFO") -> None:
    """Idempotent: entry points call it once; tests leave logging to pytest."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_image_service", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        handler._image_service = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for noisy in ("botocore", "aiobotocore", "werkzeug", "moto", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
