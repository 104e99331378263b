"""A counting, fault-injecting HTTP proxy for AWS clients, in front of the real moto server.

Point a client's `endpoint_url` at it; every request is forwarded to moto unless a `Rule`
matches its operation, in which case the proxy answers an AWS-shaped error, waits, drops the
connection, returns a malformed body, or (for `DeleteMessageBatch`) deletes only part of a batch.
It counts requests and body bytes by operation (`seen`, `received`, `sent`): the fault tests
check what a client did, `capacity.py` measures what an image costs in requests and bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web

Action = Literal["error", "delay", "drop", "malformed", "partial_batch"]


@dataclass
class Rule:
    """Fault the first `times` requests (None: all) whose operation (and bucket) match."""

    operation: str
    action: Action = "error"
    status: int = 500
    code: str = "InternalError"
    delay: float = 0.0
    bucket: str | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, operation: str, bucket: str | None) -> bool:
        if self.operation not in ("*", operation):
            return False
        if self.bucket is not None and self.bucket != bucket:
            return False
        return self.times is None or self.hits < self.times


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)  # request body bytes by operation
    sent: Counter[str] = field(default_factory=Counter)  # response body bytes by operation
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    async def start(self) -> str:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        # A fresh upstream connection per request: moto (werkzeug) closes idle ones, and a reused
        # one closing under a request would show as an error (and a client retry) nobody caused.
        self._session = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(force_close=True)
        )
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        operation, bucket = operation_of(request)
        self.seen[operation] += 1
        self.received[operation] += len(body)
        rule = next((r for r in self.rules if r.matches(operation, bucket)), None)
        if rule is not None:
            rule.hits += 1
            if rule.action == "delay":
                await asyncio.sleep(rule.delay)
            elif rule.action == "drop":
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError("fault proxy dropped the connection")
            elif rule.action == "malformed":
                return web.Response(
                    status=200, body=b"<<<\x00 this is not a valid AWS response", content_type="text/xml"
                )
            elif rule.action == "error":
                return aws_error(request, rule.status, rule.code)
            elif rule.action == "partial_batch":
                return await self._partial_delete(request, body)
        try:
            response = await self._forward(request, body)
        except aiohttp.ClientError:  # the endpoint went away (it is stopping): a gateway error
            return aws_error(request, 503, "ServiceUnavailable")
        self.sent[operation] += len(response.body or b"")  # type: ignore[arg-type]
        return response

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            hop = {"transfer-encoding", "connection", "content-encoding"}
            if request.method != "HEAD":  # HEAD keeps the object's length; others get the body's
                hop.add("content-length")
            passed = {k: v for k, v in upstream.headers.items() if k.lower() not in hop}
            return web.Response(status=upstream.status, body=payload or None, headers=passed)

    async def _partial_delete(self, request: web.Request, body: bytes) -> web.Response:
        """Delete the first half of the batch for real and report the rest as failed."""
        document = json.loads(body)
        entries = document["Entries"]
        keep, fail = entries[: len(entries) // 2], entries[len(entries) // 2 :]
        successful = []
        if keep:
            forwarded = await self._forward(request, json.dumps({**document, "Entries": keep}).encode())
            assert forwarded.body is not None
            successful = json.loads(bytes(forwarded.body)).get("Successful", [])  # type: ignore[arg-type]
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"}
            for e in fail
        ]
        return web.json_response(
            {"Successful": successful, "Failed": failed}, content_type="application/x-amz-json-1.0"
        )


def operation_of(request: web.Request) -> tuple[str, str | None]:
    """Name the AWS operation of a request (SQS JSON protocol, DynamoDB as `dynamodb:<op>`, or
    S3 REST) and its bucket."""
    target = request.headers.get("X-Amz-Target", "")
    if target.startswith("AmazonSQS."):
        return target.removeprefix("AmazonSQS."), None
    if target.startswith("DynamoDB_"):
        return f"dynamodb:{target.partition('.')[2]}", None
    parts = request.path.lstrip("/").split("/", 1)
    bucket = parts[0] or None
    has_key = len(parts) == 2 and parts[1] != ""
    query = request.query
    method = request.method
    if not has_key:
        bucket_ops = {
            "HEAD": "HeadBucket",
            "PUT": "CreateBucket",
            "GET": "ListObjects",
            "DELETE": "DeleteBucket",
        }
        if method == "POST" and "delete" in query:
            return "DeleteObjects", bucket
        return bucket_ops.get(method, method), bucket
    if "uploadId" in query:
        by_method = {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}
        return by_method.get(method, "ListParts"), bucket
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload", bucket
    by_method = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}
    return by_method.get(method, method), bucket


def aws_error(request: web.Request, status: int, code: str) -> web.Response:
    """An error as the real service would send it, so botocore parses the code."""
    if request.headers.get("X-Amz-Target", "").startswith("AmazonSQS."):
        return web.json_response(
            {"__type": f"com.amazonaws.sqs#{code}", "message": "injected fault"},
            status=status,
            content_type="application/x-amz-json-1.0",
            headers={"x-amzn-query-error": f"{code};Sender"},
        )
    xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected fault</Message></Error>"
    return web.Response(status=status, body=xml.encode(), content_type="application/xml")
