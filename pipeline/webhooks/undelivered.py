"""The outbox's DLQ as the operator works it (`python -m pipeline webhooks list|redeliver`):
each event described however malformed, and events sent back with their attempts renewed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pipeline.core.dlq import BODY_PREVIEW, reason_of, redrive, short
from pipeline.core.errors import PoisonMessage
from pipeline.core.ports import Message, MessageQueue
from pipeline.webhooks.envelope import Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UndeliveredEvent:
    """One dead-lettered event as the operator sees it."""

    message_id: str
    event_id: str
    type: str
    owner: str
    image_id: str
    error_code: str
    error_message: str
    attempts: str
    failed_at: str
    body: str = ""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def describe_event(message: Message) -> UndeliveredEvent:
    """What an operator needs to see of a dead-lettered event, however malformed: never raises."""
    event_id = kind = owner = image_id = body = ""
    try:
        event = Envelope.decode(message.body).event
    except PoisonMessage:
        body = short(message.body, BODY_PREVIEW)
    else:
        event_id, kind, owner = event.id, event.type, event.owner
        image_id = _image_id(event.body)
    return UndeliveredEvent(
        message_id=message.id,
        event_id=short(event_id, 100),
        type=short(kind, 100),
        owner=short(owner, 100),
        image_id=short(image_id, 300),
        **reason_of(message),
        body=body,
    )


def _image_id(payload: bytes) -> str:
    try:
        data: Any = json.loads(payload).get("data", {})
        return str(data.get("image_id", ""))
    except (ValueError, AttributeError, RecursionError):
        return ""


async def redeliver(
    dead: MessageQueue,
    outbox: MessageQueue,
    *,
    event_ids: frozenset[str] = frozenset(),
    limit: int | None = None,
) -> int:
    """Put dead-lettered events back in the outbox with their attempts renewed (all, or those
    named); returns how many (`pipeline.core.dlq.redrive`: sent first, then deleted)."""

    def renewed(message: Message) -> tuple[str, dict[str, str]] | None:
        try:
            event = Envelope.decode(message.body).event
        except PoisonMessage:
            return None  # not an event: it stays where the operator can see it
        if event_ids and event.id not in event_ids:
            return None
        return Envelope(event).encode(), {"event_id": event.id, "type": event.type}

    return await redrive(dead, outbox, limit, renewed)
