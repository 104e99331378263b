"""An outbox message: the event, the attempts it had, and when the next may start. Attempts are
counted in the message (`pipeline.webhooks.outbox`), so its body is all there is to know."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pipeline.core.errors import PoisonMessage
from pipeline.webhooks.delivery import Event

#: An outbox message's body is our own JSON: anything much longer is not one of ours.
_MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class Envelope:
    """One outbox message: the event, the attempts it had, and when the next may start."""

    event: Event
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""

    def encode(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "owner": self.event.owner,
                "id": self.event.id,
                "type": self.event.type,
                "payload": self.event.body.decode(),
                "attempts": self.attempts,
                "not_before": self.not_before,
                "last_error": self.last_error,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, body: str) -> Envelope:
        """The envelope in `body`; `PoisonMessage` for anything else (never another exception)."""
        try:
            if len(body) > _MAX_BODY:
                raise ValueError("too long")
            fields = json.loads(body)
            if not isinstance(fields, dict) or fields.get("v") != 1:
                raise ValueError("not a version 1 envelope")
            strings = [fields[name] for name in ("owner", "id", "type", "payload", "last_error")]
            attempts, not_before = fields["attempts"], fields["not_before"]
            if not all(isinstance(text, str) for text in strings):
                raise ValueError("a field is not a string")
            if type(attempts) is not int or attempts < 0 or type(not_before) not in (int, float):
                raise ValueError("bad counters")
            if not math.isfinite(not_before):
                raise ValueError("bad time")
            owner, event_id, kind, payload, last_error = strings
            event = Event(owner, event_id, kind, payload.encode())
        except (ValueError, KeyError, TypeError, UnicodeError, RecursionError, OverflowError) as exc:
            raise PoisonMessage(f"not a webhook event: {exc}") from None
        return cls(event, attempts, float(not_before), last_error)
