"""What each of the service's processes asks of AWS, as IAM actions on its resources, and a dry
run of each: a request AWS authorizes before it fails harmlessly, so `python -m pipeline doctor`
can tell a refused permission from a granted one without changing anything.

`NEEDS` is the list the CloudFormation template's roles must grant, exactly: `tests/test_iam.py`
checks it against the template and against the calls the running processes make.

The dry runs, and why each one changes nothing:

- S3: every request names a key under `_doctor/` that does not exist. A delete of a missing key
  succeeds and removes nothing; a write is conditional (`If-Match` an ETag), and with no object to
  match S3 writes nothing (404), so no event and no job; an abort names an upload never started.
- SQS: a receive asks for 11 messages (SQS takes 1 to 10), a send asks for a delay past SQS's
  15 minutes, lease changes and deletes name a receipt handle that was never issued. None takes,
  moves or adds a message: a receive that succeeded would count towards a message's redrive.
- DynamoDB: writes carry a condition that fails (`attribute_exists` on a key nobody uses); reads
  are reads.

Each relies on the service authorizing a request before judging its parameters, which is how
moto answers (`tests/test_doctor.py` runs them under moto's IAM enforcement). For SQS's
out-of-range receive and send, that order is not documented: if real SQS judged the parameter
first, the probe would report the action allowed without the permission (the consumer's first
poll, or first dead letter, would then show it in its log).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from botocore.exceptions import ClientError

from config.settings import Settings
from pipeline.aws.clients import AwsClients, error_code
from pipeline.core.topology import SPECS

SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


def _each(actions: str, kinds: str) -> frozenset[str]:
    """Every action of `actions` on every kind of `kinds` (both space-separated)."""
    return frozenset(f"{action} on {kind}" for action in actions.split() for kind in kinds.split())


#: What both processes do: read and write the renditions, read originals and delete rejected
#: ones, open every queue and read its depth (readiness, metrics), and keep the records.
_SHARED = (
    _each("s3:GetObject s3:PutObject s3:DeleteObject", "thumbnails")
    | _each("s3:GetObject s3:DeleteObject", "source")
    | _each("sqs:GetQueueUrl sqs:GetQueueAttributes", "events dlq outbox outbox-dlq")
    | _each("dynamodb:GetItem dynamodb:PutItem dynamodb:UpdateItem dynamodb:DeleteItem", "images")
    | _each("dynamodb:GetItem dynamodb:UpdateItem", "users")
)
#: Per process, "action on kind": kinds are the buckets (`source`, `thumbnails`), the queues
#: (`events`, `dlq`, `outbox`, `outbox-dlq`) and the tables by their suffix.
NEEDS: dict[str, frozenset[str]] = {
    # Uploads (streamed, multipart, resumable), listings, keys, idempotency, throttling, the
    # signing secret.
    "api": _SHARED
    | _each("s3:PutObject s3:AbortMultipartUpload s3:ListMultipartUploadParts", "source")
    | _each("s3:ListBucket", "source thumbnails")
    | _each("dynamodb:Query", "images")
    | _each("dynamodb:GetItem", "keys")
    | _each("dynamodb:GetItem dynamodb:PutItem dynamodb:UpdateItem", "requests")
    | _each("dynamodb:UpdateItem", "throttle")
    | _each("dynamodb:GetItem dynamodb:PutItem", "config"),
    # S3 events and webhook events received, leased and deleted; dead letters, webhook events.
    "consumer": _SHARED
    | _each("sqs:ReceiveMessage sqs:ChangeMessageVisibility sqs:DeleteMessage", "events outbox")
    | _each("sqs:SendMessage", "dlq outbox outbox-dlq"),
}

#: Answers that mean the request was authorized and then refused for its (deliberately bad)
#: parameters: the dry run's expected outcome.
HARMLESS = {
    "404",
    "NoSuchKey",
    "NotFound",
    "NoSuchUpload",
    "InvalidParameterValue",
    "ReceiptHandleIsInvalid",
    "ConditionalCheckFailedException",
}
#: Answers that mean the resource is missing: nothing to try (that is a finding of its own).
MISSING = {
    "NoSuchBucket",
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}
#: Answers that mean the credentials themselves are refused: nothing more is worth trying.
BAD_CREDENTIALS = {
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
}
#: Answers that mean the permission is missing (HeadObject's is a bare 403).
REFUSED = {"AccessDenied", "AccessDeniedException", "403", "UnauthorizedOperation", "AuthorizationError"}
PROBE_PREFIX = "_doctor/"
#: A key no item has: the tables' keys are user and image ids, neither of which starts with `_`.
ABSENT = "_doctor"
#: SQS's longest delay, seconds.
MAX_DELAY = 900
#: An ETag no object has (S3's are quoted hex digests).
NO_ETAG = '"_doctor"'


@dataclass(frozen=True)
class Outcome:
    """One dry run: the need it tried, and whether the credentials may (None: could not tell)."""

    need: str
    allowed: bool | None
    detail: str = ""
    #: Not tried: the bucket, queue or table is not there.
    missing: bool = False


class _Resources:
    """The configured names behind each kind."""

    def __init__(self, settings: Settings) -> None:
        aws = settings.aws
        self.buckets = {"source": aws.source_bucket, "thumbnails": aws.dest_bucket}
        self.queues = {
            "events": aws.queue_name,
            "dlq": aws.dlq_name,
            "outbox": aws.outbox_name,
            "outbox-dlq": aws.outbox_dlq_name,
        }
        self.table = aws.table


async def dry_run(clients: AwsClients, settings: Settings, needs: frozenset[str]) -> list[Outcome]:
    """Try each need; one outcome each, in a stable order. Credentials that are refused outright
    raise the first such answer (`ClientError`): every need would say the same."""
    names = _Resources(settings)
    urls: dict[str, str] = {}
    outcomes = []
    for need in sorted(needs):
        action, kind = need.split(" on ")
        try:
            await _probe(clients, names, urls, action, kind)
        except ClientError as exc:
            code = error_code(exc)
            if code in BAD_CREDENTIALS:
                raise
            if code in REFUSED:
                outcomes.append(Outcome(need, False, code))
                continue
            if code in MISSING:
                outcomes.append(Outcome(need, None, code, missing=True))
                continue
            if code not in HARMLESS:
                outcomes.append(Outcome(need, None, f"{code} on {exc.operation_name}"))
                continue
        outcomes.append(Outcome(need, True))
    return outcomes


async def _probe(
    clients: AwsClients, names: _Resources, urls: dict[str, str], action: str, kind: str
) -> None:
    service, operation = action.split(":")
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    if service == "s3":
        await _s3(clients, names.buckets[kind], operation, key)
    elif service == "sqs":
        if kind not in urls:  # GetQueueUrl is itself a need: its refusal is that probe's answer
            urls[kind] = (await clients.sqs.get_queue_url(QueueName=names.queues[kind]))["QueueUrl"]
        await _sqs(clients, urls[kind], operation)
    else:
        await _dynamodb(clients, names, kind, operation)


async def _s3(clients: AwsClients, bucket: str, operation: str, key: str) -> None:
    s3 = clients.s3
    if operation == "GetObject":
        await s3.head_object(Bucket=bucket, Key=key)
    elif operation == "DeleteObject":
        await s3.delete_object(Bucket=bucket, Key=key)
    elif operation == "ListBucket":
        await s3.list_objects_v2(Bucket=bucket, Prefix=PROBE_PREFIX, MaxKeys=1)
    elif operation == "AbortMultipartUpload":
        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=ABSENT)
    elif operation == "ListMultipartUploadParts":
        await s3.list_parts(Bucket=bucket, Key=key, UploadId=ABSENT)
    elif operation == "PutObject":  # S3's conditional write: no object to match, nothing written
        await s3.put_object(Bucket=bucket, Key=key, Body=b"", IfMatch=NO_ETAG)
    else:
        raise ValueError(f"no dry run for s3:{operation}")


async def _sqs(clients: AwsClients, url: str, operation: str) -> None:
    sqs = clients.sqs
    if operation == "GetQueueUrl":
        return  # asked above
    if operation == "GetQueueAttributes":
        await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    elif operation == "ReceiveMessage":
        await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11, WaitTimeSeconds=0)
    elif operation == "SendMessage":
        await sqs.send_message(QueueUrl=url, MessageBody=ABSENT, DelaySeconds=MAX_DELAY + 1)
    elif operation == "ChangeMessageVisibility":
        await sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=ABSENT, VisibilityTimeout=0)
    elif operation == "DeleteMessage":
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=ABSENT)
    else:
        raise ValueError(f"no dry run for sqs:{operation}")


async def _dynamodb(clients: AwsClients, names: _Resources, kind: str, operation: str) -> None:
    db = clients.dynamodb
    spec = SPECS_BY_NAME[kind]
    table = names.table(kind)
    key = {name: {"S": ABSENT} for name in spec.key}
    absent = {"ConditionExpression": "attribute_exists(#k)", "ExpressionAttributeNames": {"#k": spec.key[0]}}
    if operation == "GetItem":
        await db.get_item(TableName=table, Key=key)
    elif operation == "Query":  # granted on the indexes alone: the listing's
        index, keys = next(iter(spec.indexes.items()))
        await db.query(
            TableName=table,
            IndexName=index,
            KeyConditionExpression="#k = :v",
            ExpressionAttributeNames={"#k": keys[0]},
            ExpressionAttributeValues={":v": {"S": ABSENT}},
            Limit=1,
        )
    elif operation == "PutItem":
        await db.put_item(TableName=table, Item=key, **absent)
    elif operation == "UpdateItem":
        await db.update_item(TableName=table, Key=key, UpdateExpression="REMOVE doctor", **absent)
    elif operation == "DeleteItem":
        await db.delete_item(TableName=table, Key=key, **absent)
    else:
        raise ValueError(f"no dry run for dynamodb:{operation}")
