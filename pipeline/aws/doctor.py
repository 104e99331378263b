"""Check a deployment's wiring on AWS against the topology (`pipeline.core.topology`): what
`provision` or the CloudFormation template should have made, read back the way the service
relies on it. Each check is one finding; a check the credentials may not make is a finding
too (AccessDenied names the action). Then each process's permissions are tried, one dry run per
action it uses (`pipeline.aws.permissions`): run with a process's own credentials (`--role`), it
says which of them its role refuses.

It changes nothing, not even what it finds wrong (`python -m pipeline provision` does).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from pipeline.aws.clients import AwsClients, error_code
from pipeline.aws.permissions import NEEDS, dry_run
from pipeline.core.findings import Finding
from pipeline.core.topology import QueueSpec, TableSpec, topology

#: Clock skew past which a warning is due; SigV4 refuses requests at 15 minutes.
SKEW_SECONDS = 60
#: The events an upload ends with: a PUT, or a completed multipart upload (large files).
UPLOAD_EVENTS = {"s3:ObjectCreated:Put", "s3:ObjectCreated:CompleteMultipartUpload"}


class _Problem(Exception):
    """A check failed; the message says what was found."""


async def diagnose(
    clients: AwsClients, settings: Settings, roles: tuple[str, ...] = tuple(NEEDS), *, wiring: bool = True
) -> list[Finding]:
    """Every check, in the order a deployment is built: buckets, queues, wiring, tables, clock,
    then the permissions of each process in `roles`. Without `wiring`, the permissions alone:
    a service role may not read the wiring (notifications, policies, tables' descriptions)."""
    findings: list[Finding] = []
    check = _checker(findings)
    if wiring:
        await _wiring(clients, settings, check)
    for role in roles:
        await check(f"permissions of the {role}", functools.partial(_permissions, clients, settings, role))
    return findings


async def diagnose_objects(s3: Any, settings: Settings) -> list[Finding]:
    """The buckets and the clock of a store that holds the local backend's objects alone
    (`IMGSVC_S3_ENDPOINT_URL` with a data directory): no queue or table of its own to check."""
    findings: list[Finding] = []
    check = _checker(findings)
    clients = AwsClients(s3=s3, sqs=None, dynamodb=None)
    plan = topology(settings)
    for bucket in (plan.source_bucket, plan.dest_bucket):
        await check(f"bucket {bucket}", functools.partial(_bucket, clients, bucket))
    await check("clock", lambda: _clock(clients, plan.dest_bucket))
    return findings


Check = Callable[[str, Callable[[], Awaitable[str]]], Awaitable[None]]


def _checker(findings: list[Finding]) -> Check:
    """A check's runner: its finding, a failure's included, appended to `findings`."""

    async def check(name: str, step: Callable[[], Awaitable[str]]) -> None:
        try:
            findings.append(Finding(name, True, await step()))
        except _Problem as exc:
            findings.append(Finding(name, False, str(exc)))
        except ClientError as exc:
            operation = exc.operation_name
            findings.append(Finding(name, False, f"{error_code(exc)} on {operation}: {_message(exc)}"))
        except BotoCoreError as exc:
            findings.append(Finding(name, False, f"no answer: {exc}"))
        except Exception as exc:  # an answer of a shape not foreseen: this check's finding, not a crash
            findings.append(Finding(name, False, f"could not be checked: {type(exc).__name__}: {exc}"))

    return check


async def _wiring(clients: AwsClients, settings: Settings, check: Check) -> None:
    plan = topology(settings)
    arns: dict[str, str] = {}
    for bucket in (plan.source_bucket, plan.dest_bucket):
        await check(f"bucket {bucket}", functools.partial(_bucket, clients, bucket))
    for spec in plan.queues:
        await check(f"queue {spec.name}", functools.partial(_queue, clients, spec, arns))
    if settings.aws.s3_notifications:  # else the service announces its writes itself
        await check(
            "bucket notification",
            lambda: _notification(clients, plan.source_bucket, plan.notified_queue, arns),
        )
        await check("queue policy", lambda: _queue_policy(clients, plan.source_bucket, plan.notified_queue))
    if "presigned" in settings.web.upload_modes:
        await check("CORS for presigned uploads", lambda: _cors(clients, plan.source_bucket))
    for table in plan.tables:
        name = settings.aws.table(table.name)
        await check(f"table {name}", functools.partial(_table, clients, name, table))
    await check("clock", lambda: _clock(clients, plan.dest_bucket))


async def _bucket(clients: AwsClients, bucket: str) -> str:
    await clients.s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
    return "exists and can be listed"


async def _queue(clients: AwsClients, spec: QueueSpec, arns: dict[str, str]) -> str:
    url = (await clients.sqs.get_queue_url(QueueName=spec.name))["QueueUrl"]
    attributes = (await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
    arns[spec.name] = attributes["QueueArn"]
    if spec.dead_letter is None:
        return "exists"
    raw = attributes.get("RedrivePolicy")
    if not raw:
        raise _Problem(f"no redrive policy: failed messages would never reach {spec.dead_letter}")
    redrive = json.loads(raw)
    target = str(redrive.get("deadLetterTargetArn", ""))
    if target.rsplit(":", 1)[-1] != spec.dead_letter:
        raise _Problem(f"redrives to {target or 'nothing'}, not {spec.dead_letter}")
    receives = int(redrive.get("maxReceiveCount", 0))
    wanted = spec.max_receive_count or 0
    if receives < wanted:
        raise _Problem(
            f"maxReceiveCount {receives} is under {wanted}: SQS would dead-letter a message before "
            "the consumer's own attempts are spent"
        )
    return f"redrives to {spec.dead_letter} after {receives} receives"


async def _notification(clients: AwsClients, bucket: str, queue: str, arns: dict[str, str]) -> str:
    config = await clients.s3.get_bucket_notification_configuration(Bucket=bucket)
    events: set[str] = set()
    for entry in config.get("QueueConfigurations", []):
        if str(entry.get("QueueArn", "")).rsplit(":", 1)[-1] == queue:
            events.update(entry.get("Events", []))
    # Uploads end as a PUT or, for large ones, a completed multipart upload: both must be sent.
    if "s3:ObjectCreated:*" in events or events >= UPLOAD_EVENTS:
        return f"ObjectCreated events of {bucket} go to {queue}"
    if events:
        raise _Problem(
            f"{bucket} sends {queue} only {', '.join(sorted(events))}: uploads finished another way "
            "would never be processed (send s3:ObjectCreated:*)"
        )
    known = arns.get(queue, queue)
    raise _Problem(f"{bucket} sends no ObjectCreated events to {known}: uploads would never be processed")


async def _queue_policy(clients: AwsClients, bucket: str, queue: str) -> str:
    url = (await clients.sqs.get_queue_url(QueueName=queue))["QueueUrl"]
    answer = await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
    attributes = answer.get("Attributes", {})  # none at all when the queue has no policy
    if not attributes.get("Policy"):
        raise _Problem(f"{queue} has no policy: S3 may not send it {bucket}'s events")
    for statement in _statements(json.loads(attributes["Policy"])):
        if (
            statement.get("Effect") == "Allow"
            and _any_matches(statement.get("Action", []), "sqs:SendMessage")
            and _s3_may_call(statement.get("Principal", {}))
            and _allows_source(statement.get("Condition", {}), f"arn:aws:s3:::{bucket}")
        ):
            return f"S3 may send {bucket}'s events to {queue}"
    raise _Problem(f"no statement of {queue}'s policy lets s3.amazonaws.com send {bucket}'s events")


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    found = policy.get("Statement", [])
    return [found] if isinstance(found, dict) else list(found)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


def _any_matches(patterns: Any, name: str, *, case: bool = False) -> bool:
    """IAM's matching: `*` and `?` wildcards; action names are case-insensitive, ARNs are not."""
    if case:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in _listed(patterns))
    return any(fnmatch.fnmatchcase(name.lower(), pattern.lower()) for pattern in _listed(patterns))


def _s3_may_call(principal: Any) -> bool:
    """`*`, `{"AWS": "*"}` or the S3 service."""
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    services = _listed(principal.get("Service", []))
    return "*" in _listed(principal.get("AWS", [])) or "s3.amazonaws.com" in services


def _allows_source(condition: Any, bucket_arn: str) -> bool:
    """No condition on the source, or one naming this bucket (wildcards allowed)."""
    if not isinstance(condition, dict):
        return False
    for test in ("ArnLike", "ArnEquals", "StringEquals", "StringLike"):
        block = condition.get(test, {})
        named = block.get("aws:SourceArn", block.get("aws:sourcearn")) if isinstance(block, dict) else None
        if named is not None:
            return _any_matches(named, bucket_arn, case=True)
    return True


async def _cors(clients: AwsClients, bucket: str) -> str:
    try:
        rules = (await clients.s3.get_bucket_cors(Bucket=bucket))["CORSRules"]
    except ClientError as exc:
        if error_code(exc) != "NoSuchCORSConfiguration":
            raise
        rules = []
    if any("PUT" in rule.get("AllowedMethods", []) for rule in rules):
        return f"browsers may PUT presigned uploads into {bucket}"
    raise _Problem(f"{bucket} has no CORS rule allowing PUT: browsers cannot use presigned uploads")


async def _table(clients: AwsClients, name: str, spec: TableSpec) -> str:
    described = (await clients.dynamodb.describe_table(TableName=name))["Table"]
    key = [k["AttributeName"] for k in described["KeySchema"]]
    if key != list(spec.key):
        raise _Problem(f"key {key}, not {list(spec.key)}")
    indexes = {index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])}
    if missing := sorted(set(spec.indexes) - indexes):
        raise _Problem(f"index {', '.join(missing)} missing")
    if spec.ttl_attribute:
        ttl = (await clients.dynamodb.describe_time_to_live(TableName=name))["TimeToLiveDescription"]
        if (
            ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING")
            or ttl.get("AttributeName") != spec.ttl_attribute
        ):
            raise _Problem(f"TTL is not on {spec.ttl_attribute}: expired items would be kept for ever")
    return "key, indexes" + (" and TTL" if spec.ttl_attribute else "") + " as the code expects"


async def _permissions(clients: AwsClients, settings: Settings, role: str) -> str:
    outcomes = await dry_run(clients, settings, NEEDS[role])
    refused = [o.need for o in outcomes if o.allowed is False]
    untold = [f"{o.need} ({o.detail})" for o in outcomes if o.allowed is None and not o.missing]
    missing = sum(o.missing for o in outcomes)
    if refused or untold:
        parts = [f"refused {', '.join(refused)}"] if refused else []
        parts += [f"could not try {', '.join(untold)}"] if untold else []
        raise _Problem("; ".join(parts))
    tried = len(outcomes) - missing
    gone = f"; {missing} not tried, their resource is missing" if missing else ""
    return f"the {tried} actions it uses that were tried are allowed (dry runs){gone}"


async def _clock(clients: AwsClients, bucket: str) -> str:
    answer = await clients.s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
    stamp = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not stamp:
        return "the endpoint sends no Date header: not checked"
    skew = time.time() - parsedate_to_datetime(stamp).timestamp()
    if abs(skew) > SKEW_SECONDS:
        raise _Problem(
            f"this clock is {skew:+.0f} s from AWS's: signed requests fail past 15 minutes (run NTP)"
        )
    return f"within {SKEW_SECONDS} s of AWS's ({skew:+.1f} s)"


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", exc))
