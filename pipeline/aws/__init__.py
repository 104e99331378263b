"""The AWS backend: the ports over S3, SQS and DynamoDB (aiobotocore), their provisioning, and
the embedded endpoint (moto) that stands in for AWS on one machine.

May import: `config`, `pipeline.core`, the AWS libraries. Never another backend.
"""
