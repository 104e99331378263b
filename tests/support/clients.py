"""Clients of the service as the tests hold them: the API's (keys and their header) and a plain
S3 client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from web.keys import ACCOUNTS

#: The `make_client` fixture: settings (and a user) in, an HTTP client of a started app out.
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def issue_key(app: web.Application, user_id: str) -> str:
    """A fresh API key for `user_id` (created if need be), through the app's own account store."""
    accounts = app[ACCOUNTS]
    await accounts.create_user(user_id)
    return (await accounts.issue_key(user_id)).key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sync_s3(endpoint: str) -> Any:
    """A plain boto3 S3 client on `endpoint`, as any other tool would use the service's buckets."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
