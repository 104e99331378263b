"""Create the service's AWS resources, idempotently.

Run explicitly (`python -m pipeline provision`) against AWS; the embedded stack runs it at start.
Running it twice changes nothing; running it on an older layout brings settings up to date.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from config.settings import Settings
from pipeline.aws.clients import AwsClients, aws_errors
from pipeline.aws.tables import provision_tables
from pipeline.core.errors import NotFound, QueueUnavailable, StorageUnavailable
from pipeline.core.topology import MAX_RECEIVES, RETENTION_SECONDS, lease_seconds

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
    """Buckets, DLQ, queue with redrive policy and S3 policy, the ObjectCreated notification,
    and the DynamoDB tables."""
    aws = settings.aws
    await provision_tables(clients.dynamodb, aws)
    for bucket in (aws.source_bucket, aws.dest_bucket):
        await _bucket(clients, bucket, aws.region)
    dlq_url, dlq_arn = await _queue(clients, aws.dlq_name, {"MessageRetentionPeriod": str(RETENTION_SECONDS)})
    source_arn = f"arn:aws:s3:::{aws.source_bucket}"
    queue_url, queue_arn = await _queue(clients, aws.queue_name, {})
    attributes = {
        "VisibilityTimeout": str(settings.consumer.visibility_timeout),
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.consumer.redrive_max_receive_count}
        ),
        "Policy": json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "s3-object-created",
                        "Effect": "Allow",
                        "Principal": {"Service": "s3.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": queue_arn,
                        "Condition": {"ArnLike": {"aws:SourceArn": source_arn}},
                    }
                ],
            }
        ),
    }
    with aws_errors(QueueUnavailable):
        await clients.sqs.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)
    outbox_url = await _outbox(clients, settings)
    with aws_errors(StorageUnavailable):
        await clients.s3.put_bucket_notification_configuration(
            Bucket=aws.source_bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"Id": "image-service-created", "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )
        # Browsers put presigned uploads straight into the source bucket from the UI's origin;
        # the URL's signature is the authority, so any origin may send one (no cookies ride along).
        await clients.s3.put_bucket_cors(Bucket=aws.source_bucket, CORSConfiguration=UPLOAD_CORS)
    log.info(
        "provisioned source=%s dest=%s queue=%s dlq=%s outbox=%s",
        aws.source_bucket,
        aws.dest_bucket,
        queue_url,
        dlq_url,
        outbox_url,
    )
    return Provisioned(aws.source_bucket, aws.dest_bucket, queue_url, dlq_url)


async def _outbox(clients: AwsClients, settings: Settings) -> str:
    """The webhook outbox and its DLQ: both keep events as long as SQS can, and the outbox's
    redrive policy is only a net (`pipeline.webhooks.outbox` counts attempts itself)."""
    aws = settings.aws
    retention = {"MessageRetentionPeriod": str(RETENTION_SECONDS)}
    _, dead_arn = await _queue(clients, aws.outbox_dlq_name, retention)
    url, _ = await _queue(clients, aws.outbox_name, {})
    attributes = {
        **retention,
        "VisibilityTimeout": str(lease_seconds(settings.webhooks)),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": MAX_RECEIVES}),
    }
    with aws_errors(QueueUnavailable):
        await clients.sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


async def _bucket(clients: AwsClients, bucket: str, region: str) -> None:
    kwargs: dict[str, object] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        with aws_errors(StorageUnavailable, NotFound):
            await clients.s3.head_bucket(Bucket=bucket)
    except NotFound:
        with aws_errors(StorageUnavailable):
            await clients.s3.create_bucket(**kwargs)
    with aws_errors(StorageUnavailable):
        await clients.s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        # Uploads refused half-way are aborted by the API; this catches a crashed web process.
        await clients.s3.put_bucket_lifecycle_configuration(
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
        )


async def _queue(clients: AwsClients, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    with aws_errors(QueueUnavailable):
        created = await clients.sqs.create_queue(QueueName=name, Attributes=attributes)
        url = str(created["QueueUrl"])
        described = await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return url, str(described["Attributes"]["QueueArn"])
