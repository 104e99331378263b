"""The AWS backend's originals, read in the worker process with a synchronous S3 client (botocore,
the library under aiobotocore: a worker has no event loop to run the other on), made as the worker
starts (`prepare_reads`). The client gives up on a stalled S3 well within a job's timeout
(`pipeline.aws.clients.sync_s3_client`), so a slow network fails a job as transient, never as an
image too costly to process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config.settings import AwsSettings
from pipeline.aws.clients import aws_errors, sync_s3_client
from pipeline.core.errors import NotFound, StorageUnavailable
from pipeline.core.objects import ObjectMeta, OversizeObject, object_meta, source_tag
from pipeline.core.originals import Destination, whole

if TYPE_CHECKING:
    from pipeline.core.results import RenditionResult


@dataclass(frozen=True)
class S3Original:
    """An object in S3 (or the embedded endpoint), read with these settings."""

    aws: AwsSettings
    bucket: str
    key: str
    max_bytes: int

    def read(self) -> tuple[ObjectMeta, bytes]:
        s3 = client(self.aws)
        with aws_errors(StorageUnavailable, NotFound):
            response = s3.get_object(Bucket=self.bucket, Key=self.key)
            body = response["Body"]
            try:
                meta = object_meta(response)
                if meta.size > self.max_bytes:
                    raise OversizeObject(meta, self.max_bytes)
                data = body.read(self.max_bytes + 1)
            finally:
                body.close()
        return meta, whole(meta, data)

    def store(self, dest: Destination, meta: ObjectMeta, result: RenditionResult) -> RenditionResult:
        """Put the renditions as the event loop would (`JobRunner._write_renditions`: each names
        the original it was made from); they go back without their bytes."""
        s3 = client(self.aws)
        stored = []
        with aws_errors(StorageUnavailable):
            for rendition in result.renditions:
                s3.put_object(
                    Bucket=dest.bucket,
                    Key=dest.keys[rendition.spec.name],
                    Body=rendition.data,
                    ContentType=rendition.spec.content_type,
                    Metadata=source_tag(meta.etag),
                )
                stored.append(dataclasses.replace(rendition, data=b"", stored_bytes=rendition.size))
        return dataclasses.replace(result, renditions=tuple(stored))


_clients: dict[AwsSettings, Any] = {}


def client(aws: AwsSettings) -> Any:
    """This process's S3 client for `aws` (one per settings: a worker serves one service). Made
    when its worker starts (`prepare_reads`): its 0.2 s of models and its 35 MB are then paid once,
    not by the worker's first job."""
    made = _clients.get(aws)
    if made is None:
        made = _clients[aws] = sync_s3_client(aws)
    return made


def prepare_reads(aws: AwsSettings) -> None:
    """What a worker runs first on the AWS backend (`Backend.prepare_reads`): make its S3 client."""
    client(aws)
