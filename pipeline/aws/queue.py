"""SQS operations the consumer and the DLQ tools need, with errors already translated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.aws.clients import aws_errors
from pipeline.core.errors import QueueUnavailable
from pipeline.core.ports import MAX_DELAY_SECONDS, Message


def _string_attributes(raw: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: str(v.get("StringValue", "")) for k, v in (raw or {}).items() if "StringValue" in v}


class Queue:
    """One SQS queue, addressed by URL (resolved once from its name)."""

    #: A long poll that SQS is answering when its reader stops gets this long to bring its messages.
    stop_grace = 1.0

    def __init__(self, sqs: Any, url: str) -> None:
        self._sqs = sqs
        self.url = url

    @classmethod
    async def named(cls, sqs: Any, name: str) -> Queue:
        with aws_errors(QueueUnavailable):
            response = await sqs.get_queue_url(QueueName=name)
        return cls(sqs, str(response["QueueUrl"]))

    async def receive(
        self, max_messages: int, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[Message]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_seconds,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
            "MessageAttributeNames": ["All"],
        }
        if visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = visibility_timeout
        with aws_errors(QueueUnavailable):
            response = await self._sqs.receive_message(**kwargs)
        return [
            Message(
                id=str(m["MessageId"]),
                receipt_handle=str(m["ReceiptHandle"]),
                body=str(m.get("Body", "")),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                attributes=_string_attributes(m.get("MessageAttributes")),
            )
            for m in response.get("Messages", [])
        ]

    async def delete_batch(self, handles: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Delete up to ten (id, receipt handle) pairs; returns the failed ids with their codes."""
        entries = [{"Id": str(i), "ReceiptHandle": handle} for i, (_, handle) in enumerate(handles)]
        with aws_errors(QueueUnavailable):
            response = await self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
        return {handles[int(f["Id"])][0]: str(f.get("Code", "")) for f in response.get("Failed", [])}

    async def delete(self, receipt_handle: str) -> None:
        with aws_errors(QueueUnavailable, lease=True):
            await self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)

    async def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        with aws_errors(QueueUnavailable, lease=True):
            await self._sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )

    async def send(
        self, body: str, attributes: Mapping[str, str] | None = None, *, delay_seconds: int = 0
    ) -> str:
        message_attributes = {
            k: {"DataType": "String", "StringValue": v} for k, v in (attributes or {}).items() if v
        }
        with aws_errors(QueueUnavailable):
            response = await self._sqs.send_message(
                QueueUrl=self.url,
                MessageBody=body,
                MessageAttributes=message_attributes,
                DelaySeconds=max(0, min(delay_seconds, MAX_DELAY_SECONDS)),
            )
        return str(response["MessageId"])

    async def depth(self) -> dict[str, int]:
        """Visible messages, and those not visible now: leased or delayed (approximate, as SQS
        reports them)."""
        with aws_errors(QueueUnavailable):
            response = await self._sqs.get_queue_attributes(
                QueueUrl=self.url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        attrs = response.get("Attributes", {})
        hidden = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
        return {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": hidden + int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
        }

    async def purge(self) -> None:
        with aws_errors(QueueUnavailable):
            await self._sqs.purge_queue(QueueUrl=self.url)
