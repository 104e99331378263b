"""What the code asks of AWS, read two ways: from the wire (moto's recording of each request,
turned into the IAM actions and resources it needs, by the credentials that signed it) and from
the source (every botocore operation `pipeline/aws/` calls). `tests/test_iam.py` checks the
template's roles against both."""

from __future__ import annotations

import ast
import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

from tests.support.settings import ROOT

ACCOUNT = "123456789012"  # moto's
REGION = "us-east-1"
#: Operations whose IAM action is not `service:Operation`.
ACTION_OF = {
    "s3:HeadObject": "s3:GetObject",
    "s3:HeadBucket": "s3:ListBucket",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:ListObjects": "s3:ListBucket",
    "s3:CreateMultipartUpload": "s3:PutObject",
    "s3:UploadPart": "s3:PutObject",
    "s3:CompleteMultipartUpload": "s3:PutObject",
    "s3:ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "s3:ListParts": "s3:ListMultipartUploadParts",
    "s3:DeleteObjects": "s3:DeleteObject",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}
#: A transaction's parts, as the IAM actions each needs (TransactWriteItems has none of its own).
TRANSACT_PART = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}


@dataclass(frozen=True)
class Call:
    """One IAM action on one resource, needed by a request signed with `key_id`."""

    key_id: str
    action: str
    resource: str
    operation: str


def recorded_calls(path: Path) -> list[Call]:
    """Every request moto's recorder wrote to `path`, as the actions it needs."""
    calls: list[Call] = []
    for line in path.read_text().splitlines():
        calls.extend(_calls_of(json.loads(line)))
    return calls


def _calls_of(entry: dict[str, Any]) -> Iterator[Call]:
    headers = {k.lower(): v for k, v in entry["headers"].items()}
    url = urlsplit(entry["url"])
    query = parse_qs(url.query, keep_blank_values=True)
    credential = re.search(r"Credential=([^/,]+)/[^/]+/[^/]+/([^/]+)/", headers.get("authorization", ""))
    if credential:
        key_id, service = credential.groups()
    elif "X-Amz-Credential" in query:  # a presigned URL, used by whoever holds it
        key_id, _, _, service, _ = query["X-Amz-Credential"][0].split("/")
    else:
        return
    body = entry.get("body") or ""
    raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
    if service == "s3":
        yield from _s3_calls(key_id, entry["method"], url.path, query, headers, raw)
    else:
        target = headers.get("x-amz-target", "")
        operation = target.split(".")[-1]
        document = json.loads(raw or b"{}")
        yield from _json_calls(key_id, service, operation, document)


def _s3_calls(
    key_id: str, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
) -> Iterator[Call]:
    bucket, _, key = path.lstrip("/").partition("/")
    key = unquote(key)
    obj, bucket_arn = f"arn:aws:s3:::{bucket}/{key}", f"arn:aws:s3:::{bucket}"
    if key:
        if method == "PUT" and "x-amz-copy-source" in headers:
            source = unquote(headers["x-amz-copy-source"]).lstrip("/")
            yield Call(key_id, "s3:GetObject", f"arn:aws:s3:::{source}", "CopyObject")
            operation = "CopyObject"
            action = "s3:PutObject"
        else:
            operation = {
                ("PUT", True): "UploadPart",
                ("PUT", False): "PutObject",
                ("GET", False): "GetObject",
                ("HEAD", False): "HeadObject",
                ("DELETE", False): "DeleteObject",
                ("DELETE", True): "AbortMultipartUpload",
                ("POST", True): "CompleteMultipartUpload",
            }.get((method, "uploadId" in query), f"{method} object")
            if method == "POST" and "uploads" in query:
                operation = "CreateMultipartUpload"
            action = ACTION_OF.get(f"s3:{operation}", f"s3:{operation}")
        yield Call(key_id, action, obj, operation)
        return
    if method == "POST" and "delete" in query:
        for node in ElementTree.fromstring(body).iter():
            if node.tag.endswith("Key"):
                yield Call(key_id, "s3:DeleteObject", f"{bucket_arn}/{node.text}", "DeleteObjects")
        return
    operation = {
        "GET": "ListMultipartUploads" if "uploads" in query else "ListObjectsV2",
        "HEAD": "HeadBucket",
    }
    name = operation.get(method, f"{method} bucket")
    yield Call(key_id, ACTION_OF.get(f"s3:{name}", f"s3:{name}"), bucket_arn, name)


def _json_calls(key_id: str, service: str, operation: str, document: dict[str, Any]) -> Iterator[Call]:
    action = ACTION_OF.get(f"{service}:{operation}", f"{service}:{operation}")
    if service == "sqs":
        name = document.get("QueueName") or document.get("QueueUrl", "").rsplit("/", 1)[-1]
        yield Call(key_id, action, f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}", operation)
        return

    def table(name: str, index: str | None = None) -> str:
        arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
        return f"{arn}/index/{index}" if index else arn

    if operation in ("TransactWriteItems", "TransactGetItems"):
        for item in document["TransactItems"]:
            ((part, body),) = item.items()
            yield Call(key_id, TRANSACT_PART[part], table(body["TableName"]), operation)
    elif operation in ("BatchWriteItem", "BatchGetItem"):
        for name in document["RequestItems"]:
            yield Call(key_id, action, table(name), operation)
    else:
        yield Call(key_id, action, table(document.get("TableName", ""), document.get("IndexName")), operation)


def allowed(policies: Iterable[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether an Allow statement of `policies` (none denies) grants `action` on `resource`."""
    return any(_grants(s, action, resource) for s in statements(policies))


def statements(policies: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for policy in policies:
        for statement in _listed(policy["Statement"]):
            assert statement["Effect"] == "Allow", statement
            yield statement


def grants(policies: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """Each (action, resource pattern) pair the policies grant."""
    return {
        (a, r) for s in statements(policies) for a in _listed(s["Action"]) for r in _listed(s["Resource"])
    }


def _grants(statement: dict[str, Any], action: str, resource: str) -> bool:
    return any(
        matches(a, r, action, resource)
        for a in _listed(statement["Action"])
        for r in _listed(statement["Resource"])
    )


def matches(action_pattern: str, resource_pattern: str, action: str, resource: str) -> bool:
    """Whether a policy's action and resource patterns cover `action` on `resource` (IAM's
    wildcards; actions case-insensitively)."""
    return fnmatchcase(action.lower(), action_pattern.lower()) and fnmatchcase(resource, resource_pattern)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def operations_in_code(folder: Path = ROOT / "pipeline" / "aws") -> dict[str, set[str]]:
    """Every S3, SQS and DynamoDB operation called in `folder` (only `pipeline/aws/` opens AWS
    clients: `pipeline/aws/clients.py`), as `service:Operation`, with the modules calling it.
    Presigned URLs and paginators name theirs in a string."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    known: dict[str, list[str]] = {}
    for service in ("s3", "sqs", "dynamodb"):
        for name in session.get_service_model(service).operation_names:
            known.setdefault(xform_name(name), []).append(f"{service}:{name}")
    found: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in ("generate_presigned_url", "get_paginator") and node.args:
                assert isinstance(node.args[0], ast.Constant), ast.unparse(node)
                name = str(node.args[0].value)
            for operation in known.get(name, []):
                found.setdefault(operation, set()).add(path.stem)
    return found
