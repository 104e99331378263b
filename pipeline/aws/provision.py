"""Create the service's AWS resources, idempotently.

Run explicitly (`python -m pipeline provision`) against AWS; the embedded stack runs it at start.
Running it twice changes nothing; running it on an older layout brings settings up to date.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from config.settings import Settings
from pipeline.aws.clients import AwsClients, aws_errors, error_code
from pipeline.aws.tables import provision_tables
from pipeline.core.errors import NotFound, QueueUnavailable, StorageUnavailable
from pipeline.core.topology import topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provisioned:
    source_bucket: str
    dest_bucket: str
    queue_url: str
    dlq_url: str


#: The source bucket's CORS rules: presigned PUTs from any origin (the CloudFormation template's too).
UPLOAD_CORS = {
    "CORSRules": [
        {
            "AllowedMethods": ["PUT"],
            "AllowedOrigins": ["*"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag"],
            "MaxAgeSeconds": 3600,
        }
    ]
}


async def provision(clients: AwsClients, settings: Settings) -> Provisioned:
    """The topology (`pipeline.core.topology`): buckets, queues with their redrive policies, the
    S3 policy on the notified queue and the ObjectCreated notification, and the DynamoDB tables."""
    aws = settings.aws
    plan = topology(settings)
    await provision_tables(clients.dynamodb, aws)
    await provision_buckets(clients.s3, settings)
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    for spec in plan.queues:  # dead-letter queues first: the others' redrive policies name them
        urls[spec.name], arns[spec.name] = await _queue(clients, spec.name)
        attributes = {"VisibilityTimeout": str(spec.visibility_timeout)}
        if spec.retention_seconds is not None:
            attributes["MessageRetentionPeriod"] = str(spec.retention_seconds)
        if spec.dead_letter is not None:
            policy = {
                "deadLetterTargetArn": arns[spec.dead_letter],
                "maxReceiveCount": spec.max_receive_count,
            }
            attributes["RedrivePolicy"] = json.dumps(policy)
        if spec.name == plan.notified_queue:
            attributes["Policy"] = json.dumps(
                _s3_may_send(arns[spec.name], f"arn:aws:s3:::{plan.source_bucket}")
            )
        with aws_errors(QueueUnavailable):
            await clients.sqs.set_queue_attributes(QueueUrl=urls[spec.name], Attributes=attributes)
    with aws_errors(StorageUnavailable):
        if aws.s3_notifications:  # else the service announces what it writes (`announcing`)
            await clients.s3.put_bucket_notification_configuration(
                Bucket=plan.source_bucket,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "Id": "image-service-created",
                            "QueueArn": arns[plan.notified_queue],
                            "Events": ["s3:ObjectCreated:*"],
                        }
                    ]
                },
            )
    # Browsers put presigned uploads straight into the source bucket from the UI's origin;
    # the URL's signature is the authority, so any origin may send one (no cookies ride along).
    await _where_supported(
        "CORS rules", clients.s3.put_bucket_cors(Bucket=plan.source_bucket, CORSConfiguration=UPLOAD_CORS)
    )
    log.info(
        "provisioned source=%s dest=%s queues=%s",
        plan.source_bucket,
        plan.dest_bucket,
        ",".join(urls.values()),
    )
    return Provisioned(plan.source_bucket, plan.dest_bucket, urls[aws.queue_name], urls[aws.dlq_name])


def _s3_may_send(queue_arn: str, bucket_arn: str) -> dict[str, object]:
    """The queue policy that lets the source bucket's notifications in, and nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "s3-object-created",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": bucket_arn}},
            }
        ],
    }


async def provision_buckets(s3: Any, settings: Settings) -> None:
    """The source and destination buckets, hardened where the store allows: all that a store
    holding the objects alone needs (the local backend with `IMGSVC_S3_ENDPOINT_URL`)."""
    plan = topology(settings)
    for bucket in (plan.source_bucket, plan.dest_bucket):
        await _bucket(s3, bucket, settings.aws.region)


async def _bucket(s3: Any, bucket: str, region: str) -> None:
    kwargs: dict[str, object] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        with aws_errors(StorageUnavailable, NotFound):
            await s3.head_bucket(Bucket=bucket)
    except NotFound:
        with aws_errors(StorageUnavailable):
            await s3.create_bucket(**kwargs)
    await _where_supported(
        "public access blocks",
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        ),
    )
    # Uploads refused half-way are aborted by the API; this catches a crashed web process (as
    # `python -m pipeline gc` does, where a store has no lifecycle rules).
    await _where_supported(
        "lifecycle rules",
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "abort-incomplete-multipart",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    }
                ]
            },
        ),
    )


async def _where_supported(feature: str, call: Awaitable[object]) -> None:
    """A bucket's hardening that S3 has and an S3-compatible store may lack (SeaweedFS answers
    `NotImplemented`): done where it can be, and said where it cannot."""
    try:
        await call
    except ClientError as exc:
        if error_code(exc) not in ("NotImplemented", "501"):
            with aws_errors(StorageUnavailable):
                raise
        log.warning("the object store has no %s: %s", feature, exc)


async def _queue(clients: AwsClients, name: str) -> tuple[str, str]:
    """The queue's URL and ARN, created if need be (its attributes are set apart: creating an
    existing queue with other attributes fails)."""
    with aws_errors(QueueUnavailable):
        created = await clients.sqs.create_queue(QueueName=name)
        url = str(created["QueueUrl"])
        described = await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return url, str(described["Attributes"]["QueueArn"])
