"""The one place that opens AWS clients and turns botocore errors into ours.

Clients are created once per process inside an `AsyncExitStack` and shared; nothing outside this
module (and `storage`/`queue`, which call through `aws_errors`) sees a botocore exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import botocore.session
import urllib3.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import AwsSettings
from pipeline.core.errors import (
    ImageChanged,
    InvalidRecord,
    LeaseLost,
    RangeNotSatisfiable,
    ServiceError,
    TransientError,
)

#: Credentials the embedded moto server accepts; never used against real AWS.
EMBEDDED_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
#: A worker's S3 client's limits (`sync_s3_client`), seconds.
WORKER_CONNECT_TIMEOUT = 5.0
WORKER_READ_TIMEOUT = 10.0
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_LEASE_CODES = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}


@dataclass(frozen=True)
class AwsClients:
    """The process's S3, SQS and DynamoDB clients (aiobotocore, typed loosely: botocore is dynamic)."""

    s3: Any
    sqs: Any
    dynamodb: Any


def _config(settings: AwsSettings) -> dict[str, Any]:
    custom_endpoint = settings.effective_endpoint or settings.s3_endpoint_url
    return {
        "max_pool_connections": settings.max_pool_connections,
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "retries": {"max_attempts": 3, "mode": "standard"},
        # Path-style works with any endpoint, including 127.0.0.1 where virtual hosts cannot.
        "s3": {"addressing_style": "path"} if custom_endpoint else None,
    }


def client_kwargs(settings: AwsSettings) -> dict[str, Any]:
    """Arguments for `create_client`, shared by the app, the consumer and the CLI."""
    endpoint = settings.effective_endpoint
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": AioConfig(**_config(settings))}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if settings.mode == "embedded":
        kwargs.update(EMBEDDED_CREDENTIALS)
    return kwargs


def s3_client_kwargs(settings: AwsSettings) -> dict[str, Any]:
    """`client_kwargs` for S3: the S3-compatible store's endpoint and key where one is configured
    (`AwsSettings.s3_endpoint_url`)."""
    kwargs = client_kwargs(settings)
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key
    return kwargs


@asynccontextmanager
async def open_clients(settings: AwsSettings) -> AsyncIterator[AwsClients]:
    """Open one client per service for the life of the block."""
    session = get_session()
    kwargs = client_kwargs(settings)
    async with AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(open_s3(settings, session))
        sqs = await stack.enter_async_context(session.create_client("sqs", **kwargs))
        dynamodb = await stack.enter_async_context(session.create_client("dynamodb", **kwargs))
        yield AwsClients(s3=s3, sqs=sqs, dynamodb=dynamodb)


def open_s3(settings: AwsSettings, session: Any = None) -> Any:
    """The S3 client alone, as a context manager (also what the local backend keeps its objects
    with when `s3_endpoint_url` names a store: `pipeline.backends`)."""
    kwargs = s3_client_kwargs(settings)
    # SigV4 for S3 too: a presigned PUT then signs its length, type and metadata (SigV2
    # query signing, botocore's choice with a custom endpoint, signs no length).
    kwargs["config"] = kwargs["config"].merge(AioConfig(signature_version="s3v4"))
    return (session or get_session()).create_client("s3", **kwargs)


def sync_s3_client(settings: AwsSettings) -> Any:
    """A synchronous S3 client with the same settings, for a worker process (`pipeline.core.originals`),
    which has no event loop to run aiobotocore's on. It gives up sooner: a worker's read and
    write each end within 2 x (5 + 10) s, well inside a job's timeout (120 s by default), so a
    stalled S3 fails the job as `StorageUnavailable` (retried), not as a job that ran out of time
    (which, twice, would call the image too costly)."""
    config = _config(settings) | {
        "connect_timeout": min(settings.connect_timeout, WORKER_CONNECT_TIMEOUT),
        "read_timeout": min(settings.read_timeout, WORKER_READ_TIMEOUT),
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    kwargs = s3_client_kwargs(settings) | {"config": Config(**config, signature_version="s3v4")}
    return botocore.session.get_session().create_client("s3", **kwargs)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def aws_errors(
    transient: type[TransientError],
    not_found: type[ServiceError] | None = None,
    *,
    lease: bool = False,
) -> Iterator[None]:
    """Translate botocore and transport errors raised inside the block into service errors.

    `lease=True` marks calls on a receipt handle, where an invalid handle means another consumer
    owns the message now (`LeaseLost`), not that SQS is down.
    """
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if not_found is not None and code in _NOT_FOUND_CODES:
            raise not_found() from exc
        if code == "ValidationException":  # DynamoDB refusing the request itself: retrying cannot help
            raise InvalidRecord(f"the database refused the request: {exc}") from exc
        if code in ("PreconditionFailed", "412"):  # an If-Match named a version that is gone
            raise ImageChanged() from exc
        if code == "InvalidRange":
            raise RangeNotSatisfiable() from exc
        if lease and code in _LEASE_CODES:
            raise LeaseLost(f"{code}: {exc}") from exc
        # NoSuchBucket, AccessDenied, throttling, 5xx: the operator can fix them, so they are retried.
        raise transient(f"{code or 'error'}: {exc}") from exc
    # urllib3's: what botocore's own (synchronous) streaming body raises unwrapped, in a worker.
    except (
        TimeoutError,
        BotoCoreError,
        aiohttp.ClientError,
        ConnectionError,
        urllib3.exceptions.HTTPError,
    ) as exc:
        raise transient(f"{type(exc).__name__}: {exc}") from exc
