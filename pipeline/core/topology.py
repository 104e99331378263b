"""What both backends provision alike: the tables (their keys, indexes and TTLs) and the webhook
outbox's redrive and lease. The AWS provisioner, the local one and the CloudFormation test read
them here, so the two backends and the template cannot drift apart."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from config.settings import WebhookSettings


@dataclass(frozen=True)
class TableSpec:
    name: str  # suffix after the configured prefix
    key: tuple[str, ...]  # hash key, then range key if any
    indexes: Mapping[str, tuple[str, ...]]  # global secondary indexes: name -> key
    ttl_attribute: str | None = None


#: Every table the service uses. String keys throughout.
SPECS = (
    TableSpec("users", ("user_id",), {}),
    TableSpec("keys", ("key_id",), {"by_user": ("user_id", "created_at")}),
    # `purge_at`: a week past an image's expiry, a backstop for a gc that did not run.
    TableSpec(
        "images",
        ("user_id", "image_id"),
        {"by_created": ("user_id", "created_key")},
        ttl_attribute="purge_at",
    ),
    TableSpec("throttle", ("id",), {}, ttl_attribute="expires_at"),
    TableSpec("config", ("name",), {}),
    TableSpec("requests", ("id",), {}, ttl_attribute="expires_at"),  # idempotency keys, 24 h
)


#: Receives of one outbox message before the queue itself dead-letters it (deferrals count).
MAX_RECEIVES = 100
#: Seconds a dead-lettered or outstanding event is kept: SQS's longest retention.
RETENTION_SECONDS = 1_209_600


def lease_seconds(settings: WebhookSettings) -> int:
    """How long a received event stays hidden: the owner's lookup and one POST fit with room. An
    event whose consumer died comes back after it (so it is kept short); one still being delivered
    when it ends may be delivered twice, which at-least-once allows."""
    return 2 * math.ceil(settings.timeout) + 5
