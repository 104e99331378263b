"""Parse S3 event notifications as SQS delivers them (directly or wrapped by SNS).

Pure functions: a message body in, the ObjectCreated records out, or `PoisonMessage`; and the
body S3 would send for a stored object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from pipeline.core import untrusted
from pipeline.core.errors import PoisonMessage

#: SQS's own limit (1 MiB since 2025); an S3 notification is a few KiB.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ObjectCreated:
    """One object put into a bucket; `key` is already URL-decoded."""

    bucket: str
    key: str
    event_name: str
    size: int | None = None
    etag: str | None = None


@dataclass(frozen=True)
class ParsedMessage:
    """What one SQS message asks of the consumer."""

    created: tuple[ObjectCreated, ...] = ()
    ignored: tuple[str, ...] = ()
    test_event: bool = False


def parse_message(body: str) -> ParsedMessage:
    """Read an S3 notification; anything that is not one is poison and goes to the DLQ."""
    document = _load(body)
    if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
        document = _load(document["Message"])  # S3 -> SNS -> SQS fan-out
    if document.get("Event") == "s3:TestEvent":
        return ParsedMessage(test_event=True)
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise PoisonMessage("the message has no S3 event records")
    created: list[ObjectCreated] = []
    ignored: list[str] = []
    for record in records:
        event = _record(record)
        if event is None:
            ignored.append(str(record.get("eventName")))
        else:
            created.append(event)
    return ParsedMessage(created=tuple(created), ignored=tuple(ignored))


def _load(text: str) -> dict[str, Any]:
    try:
        document = untrusted.loads(text, max_bytes=MAX_BODY_BYTES)
    except untrusted.Malformed as exc:
        raise PoisonMessage(f"the message body is not acceptable: {exc}") from None
    if not isinstance(document, dict):
        raise PoisonMessage("the message body is not a JSON object")
    return document


def _record(record: Any) -> ObjectCreated | None:
    if not isinstance(record, dict) or record.get("eventSource") not in ("aws:s3", None):
        raise PoisonMessage("a record is not an S3 event")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise PoisonMessage("a record has no eventName")
    if not name.startswith("ObjectCreated:"):
        return None
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError, IndexError):
        raise PoisonMessage("a record has no bucket name or object key") from None
    if not (isinstance(bucket, str) and bucket and isinstance(raw_key, str) and raw_key):
        raise PoisonMessage("a record has an empty or non-text bucket name or object key")
    key = unquote_plus(raw_key)
    if not key:
        raise PoisonMessage("a record has an empty object key")
    size = obj.get("size")
    return ObjectCreated(
        bucket=bucket,
        key=key,
        event_name=name,
        size=size if isinstance(size, int) else None,
        etag=obj.get("eTag") if isinstance(obj.get("eTag"), str) else None,
    )


def object_created(bucket: str, key: str, size: int, etag: str) -> str:
    """The notification S3 sends for a PUT, as `parse_message` reads it (keys URL-encoded): what
    the local backend enqueues with every stored original, and reconciliation for a lost one."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag.strip('"')},
        },
    }
    return json.dumps({"Records": [record]})
