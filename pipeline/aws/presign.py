"""Presigned S3 URLs: what lets a client download or upload straight to S3 without our API in the
way (the local backend has none: its API takes and serves the bytes itself)."""

from __future__ import annotations

from typing import Any

from pipeline.aws.clients import AwsClients, aws_errors
from pipeline.core.errors import StorageUnavailable


class S3Presigner:
    """`pipeline.core.ports.Presigner` over open AWS clients."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients

    async def presign_get(self, bucket: str, key: str, expires: int, **params: Any) -> str:
        """A presigned S3 GET URL."""
        with aws_errors(StorageUnavailable):
            url: str = await self.clients.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
            )
        return url

    async def presign_put(
        self, bucket: str, key: str, expires: int, content_type: str, length: int, metadata: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """A presigned S3 PUT URL that accepts only this key, length, type and metadata, and the
        headers its request must carry."""
        with aws_errors(StorageUnavailable):
            url: str = await self.clients.s3.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": bucket,
                    "Key": key,
                    "ContentType": content_type,
                    "ContentLength": length,
                    "Metadata": metadata,
                },
                ExpiresIn=expires,
            )
        headers = {"Content-Type": content_type} | {f"x-amz-meta-{k}": v for k, v in metadata.items()}
        return url, headers

    async def presign_part(
        self, bucket: str, key: str, upload_id: str, number: int, length: int, expires: int
    ) -> str:
        """A presigned URL for part `number` of a multipart upload, signed for exactly `length`
        bytes (S3 refuses a body of another length)."""
        with aws_errors(StorageUnavailable):
            url: str = await self.clients.s3.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": bucket,
                    "Key": key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                    "ContentLength": length,
                },
                ExpiresIn=expires,
            )
        return url
