"""What both backends provision alike: the buckets, the queues (their leases, redrive and
retention), which queue the source bucket notifies, and the tables (their keys, indexes and TTLs).
The AWS provisioner, the local one and the CloudFormation test read them here (`topology`), so the
two backends and the template cannot drift apart."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from config.settings import Settings, WebhookSettings


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


@dataclass(frozen=True)
class QueueSpec:
    """What SQS keeps as a queue's attributes: the default visibility timeout, the redrive policy
    (the queue its messages go to after `max_receive_count` receives) and how long it keeps one
    (None: the store's default; the local backend keeps messages until they are deleted)."""

    name: str
    visibility_timeout: int = 30
    dead_letter: str | None = None
    max_receive_count: int | None = None
    retention_seconds: int | None = None


@dataclass(frozen=True)
class Topology:
    """Every resource of one deployment, by its configured name."""

    source_bucket: str
    dest_bucket: str
    #: Dead-letter queues before the queues that redrive to them.
    queues: tuple[QueueSpec, ...]
    #: The queue the source bucket's ObjectCreated events go to.
    notified_queue: str
    tables: tuple[TableSpec, ...] = SPECS


def topology(settings: Settings) -> Topology:
    """The jobs' queue redrives to its DLQ after a few receives more than the consumer's own
    attempts (a net for consumers that die mid-message); the webhook outbox after `MAX_RECEIVES`
    (the deliverer counts attempts itself); both DLQs and the outbox keep messages as long as SQS
    can."""
    aws, consumer = settings.aws, settings.consumer
    return Topology(
        source_bucket=aws.source_bucket,
        dest_bucket=aws.dest_bucket,
        queues=(
            QueueSpec(aws.dlq_name, retention_seconds=RETENTION_SECONDS),
            QueueSpec(
                aws.queue_name,
                visibility_timeout=consumer.visibility_timeout,
                dead_letter=aws.dlq_name,
                max_receive_count=consumer.redrive_max_receive_count,
            ),
            QueueSpec(aws.outbox_dlq_name, retention_seconds=RETENTION_SECONDS),
            QueueSpec(
                aws.outbox_name,
                visibility_timeout=lease_seconds(settings.webhooks),
                dead_letter=aws.outbox_dlq_name,
                max_receive_count=MAX_RECEIVES,
                retention_seconds=RETENTION_SECONDS,
            ),
        ),
        notified_queue=aws.queue_name,
    )
