"""Logging set-up: JSON lines for machines, `key=value` text for people at a terminal.

Every line carries the request id of the upload it concerns: the API takes it from
`X-Request-ID` (or makes one), answers with it, stores it in the original's S3 metadata, and the
consumer puts it back in context for that image's job, so one id follows an image from the HTTP
request to its thumbnail (or its DLQ entry).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def accept_request_id(offered: str | None) -> str:
    """A caller's id if it is a sane token (it ends up in logs and S3 metadata), else a new one."""
    if offered and _REQUEST_ID_RE.fullmatch(offered):
        return offered
    return os.urandom(16).hex()  # as random as a uuid4, without building one


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return logging.Formatter(
        "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s request_id=%(request_id)s",
        "%Y-%m-%dT%H:%M:%S",
    )


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Idempotent: entry points call it once; tests leave logging to pytest. `auto` is text at a
    terminal and JSON otherwise (a service's stderr goes to a collector)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_image_service", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_formatter(fmt))
        handler.addFilter(_RequestId())
        handler._image_service = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for noisy in ("botocore", "aiobotocore", "werkzeug", "moto", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
