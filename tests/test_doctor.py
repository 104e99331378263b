"""`python -m pipeline doctor`: a provisioned deployment checks out, and each fault injected into
it (moto), or into a data directory, is the one finding that fails, saying what is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from config.settings import Settings
from pipeline.aws.clients import EMBEDDED_CREDENTIALS, AwsClients, open_clients
from pipeline.aws.doctor import diagnose
from pipeline.aws.permissions import NEEDS
from pipeline.aws.provision import provision
from pipeline.core.findings import Finding
from pipeline.local.doctor import diagnose as diagnose_local
from tests.support.processes import process_env, start
from tests.support.settings import env_for, local_settings


def failed(findings: list[Finding]) -> dict[str, str]:
    return {finding.check: finding.detail for finding in findings if not finding.ok}


async def _queue_url(clients: AwsClients, name: str) -> str:
    return str((await clients.sqs.get_queue_url(QueueName=name))["QueueUrl"])


async def no_notification(clients: AwsClients, settings: Settings) -> None:
    await clients.s3.put_bucket_notification_configuration(
        Bucket=settings.aws.source_bucket, NotificationConfiguration={}
    )


async def redrive_too_soon(clients: AwsClients, settings: Settings) -> None:
    dlq = await _queue_url(clients, settings.aws.dlq_name)
    arn = (await clients.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))["Attributes"]
    policy = {"deadLetterTargetArn": arn["QueueArn"], "maxReceiveCount": 1}
    queue = await _queue_url(clients, settings.aws.queue_name)
    kept = (await clients.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["Policy"]))["Attributes"]
    # Given again: moto drops a queue's policy when other attributes are set without it.
    await clients.sqs.set_queue_attributes(
        QueueUrl=queue, Attributes={"RedrivePolicy": json.dumps(policy), "Policy": kept["Policy"]}
    )


async def policy_for_another_bucket(clients: AwsClients, settings: Settings) -> None:
    statement = {
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": "*",
        "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:s3:::someone-else"}},
    }
    await clients.sqs.set_queue_attributes(
        QueueUrl=await _queue_url(clients, settings.aws.queue_name),
        Attributes={"Policy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})},
    )


async def no_cors(clients: AwsClients, settings: Settings) -> None:
    await clients.s3.delete_bucket_cors(Bucket=settings.aws.source_bucket)


async def no_ttl(clients: AwsClients, settings: Settings) -> None:
    await clients.dynamodb.update_time_to_live(
        TableName=settings.aws.table("images"),
        TimeToLiveSpecification={"Enabled": False, "AttributeName": "purge_at"},
    )


async def no_table(clients: AwsClients, settings: Settings) -> None:
    await clients.dynamodb.delete_table(TableName=settings.aws.table("keys"))


async def no_dlq(clients: AwsClients, settings: Settings) -> None:
    await clients.sqs.delete_queue(QueueUrl=await _queue_url(clients, settings.aws.outbox_dlq_name))


Fault = Callable[[AwsClients, Settings], Awaitable[None]]
FAULTS: list[tuple[Fault, str, str]] = [
    (no_notification, "bucket notification", "sends no ObjectCreated events"),
    (redrive_too_soon, "queue events-", "maxReceiveCount 1 is under 5"),
    (policy_for_another_bucket, "queue policy", "lets s3.amazonaws.com send"),
    (no_cors, "CORS for presigned uploads", "no CORS rule allowing PUT"),
    (no_ttl, "table t-", "TTL is not on purge_at"),
    (no_table, "table t-", "ResourceNotFoundException on DescribeTable"),
    (no_dlq, "queue hooks-dlq-", "on GetQueueUrl"),
]


@pytest.mark.parametrize(("fault", "check", "says"), FAULTS, ids=[f[0].__name__ for f in FAULTS])
async def test_each_fault_is_the_one_finding_that_fails(
    moto_endpoint: str, fault: Fault, check: str, says: str
) -> None:
    settings = Settings.from_env(env_for(moto_endpoint, IMGSVC_UPLOAD_MODES="api,presigned"))
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)
        before = await diagnose(clients, settings)
        assert failed(before) == {}, failed(before)
        # Buckets, queues, wiring and CORS, tables, clock, the API's and the consumer's permissions.
        assert len(before) == 2 + 4 + 3 + 6 + 1 + 2
        await fault(clients, settings)
        after = failed(await diagnose(clients, settings))
    assert len(after) == 1, after
    ((name, detail),) = after.items()
    assert name.startswith(check) and says in detail, (name, detail)


def test_a_data_directory_checks_out_and_its_faults_are_named(tmp_path: Path) -> None:
    import asyncio

    from pipeline.local.backend import open_local

    settings = local_settings(tmp_path / "data")

    async def make() -> None:
        async with open_local(settings):
            pass

    asyncio.run(make())
    root = tmp_path / "data"
    assert failed(diagnose_local(root, settings.local.min_free_bytes)) == {}
    os.chmod(root / "state.db", 0o644)
    wide = failed(diagnose_local(root, settings.local.min_free_bytes))
    assert set(wide) == {"file modes", "database"} and "state.db" in wide["file modes"], wide
    os.chmod(root / "state.db", 0o600)
    assert set(failed(diagnose_local(root, 2**50))) == {"free disk"}
    conn = sqlite3.connect(root / "state.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    found: dict[str, Any] = failed(diagnose_local(root, settings.local.min_free_bytes))
    assert set(found) == {"schema"} and "this release's is 1" in found["schema"]
    assert set(failed(diagnose_local(tmp_path / "nowhere", 0))) == {"data directory"}


S3, SNS = "s3.amazonaws.com", "sns.amazonaws.com"


@pytest.mark.parametrize(
    ("statement", "allowed"),
    [
        ({"Effect": "Allow", "Principal": {"Service": S3}, "Action": "sqs:SendMessage"}, True),
        ({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "SQS:SendMessage"}, True),
        ({"Effect": "Allow", "Principal": "*", "Action": ["sqs:Send*"]}, True),
        ({"Effect": "Allow", "Principal": "*", "Action": "sqs:*",
          "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:s3:::src-*"}}}, True),
        ({"Effect": "Allow", "Principal": "*", "Action": "sqs:*",
          "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:s3:::other"}}}, False),
        ({"Effect": "Deny", "Principal": "*", "Action": "sqs:SendMessage"}, False),
        ({"Effect": "Allow", "Principal": {"Service": SNS}, "Action": "sqs:SendMessage"}, False),
        ({"Effect": "Allow", "Principal": "*", "Action": "sqs:ReceiveMessage"}, False),
    ],
)  # fmt: skip
def test_a_queue_policy_is_read_as_iam_reads_it(statement: dict[str, Any], allowed: bool) -> None:
    from pipeline.aws.doctor import _allows_source, _any_matches, _s3_may_call

    verdict = (
        statement["Effect"] == "Allow"
        and _any_matches(statement["Action"], "sqs:SendMessage")
        and _s3_may_call(statement["Principal"])
        and _allows_source(statement.get("Condition", {}), "arn:aws:s3:::src-1")
    )
    assert verdict is allowed


async def test_a_notification_of_puts_alone_misses_multipart_uploads(moto_endpoint: str) -> None:
    settings = Settings.from_env(env_for(moto_endpoint))
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)
        url = await _queue_url(clients, settings.aws.queue_name)
        arn = (await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]

        async def notify(*events: str) -> dict[str, str]:
            queues = [{"QueueArn": arn["QueueArn"], "Events": list(events)}]
            await clients.s3.put_bucket_notification_configuration(
                Bucket=settings.aws.source_bucket, NotificationConfiguration={"QueueConfigurations": queues}
            )
            return failed(await diagnose(clients, settings))

        assert "only s3:ObjectCreated:Put" in (await notify("s3:ObjectCreated:Put"))["bucket notification"]
        assert await notify("s3:ObjectCreated:Put", "s3:ObjectCreated:CompleteMultipartUpload") == {}


# Permissions, tried by dry runs against a moto that enforces IAM --------------------------------


@pytest.fixture
def enforcing_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server of the test's own that checks every request's signature and IAM policy (the
    session's accepts anything): its first three requests make an administrator, whose key signs
    everything after. Yields the endpoint and that key."""
    from pipeline.aws.embedded import embedded_aws

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")  # moto reads it as the child starts
    with embedded_aws("127.0.0.1", 0) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **EMBEDDED_CREDENTIALS)
        iam.create_user(UserName="admin")
        everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=_policy([everything]))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        yield endpoint, _credentials(key)


def _policy(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _credentials(key: dict[str, str]) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _user_with(endpoint: str, admin: dict[str, str], name: str, actions: set[str]) -> dict[str, str]:
    """An IAM user allowed `actions` on any resource (moto authorizes DynamoDB calls against `*`
    alone, so a table's ARN in a policy would refuse everything), and its key."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=admin["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=admin["AWS_SECRET_ACCESS_KEY"],
    )
    iam.create_user(UserName=name)
    statement = {"Effect": "Allow", "Action": sorted(actions), "Resource": "*"}
    iam.put_user_policy(UserName=name, PolicyName="role", PolicyDocument=_policy([statement]))
    return _credentials(iam.create_access_key(UserName=name)["AccessKey"])


def _actions(role: str) -> set[str]:
    return {need.split(" on ")[0] for need in NEEDS[role]}


@pytest.mark.e2e  # a moto server process of its own
async def test_each_refused_permission_is_named_by_its_dry_run(
    enforcing_moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, admin = enforcing_moto
    env = env_for(endpoint, IMGSVC_MODE="aws", IMGSVC_UPLOAD_MODES="api,presigned")
    settings = Settings.from_env(env)
    for name, value in admin.items():
        monkeypatch.setenv(name, value)
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)
        events = await _queue_url(clients, settings.aws.queue_name)
        for message in (await clients.sqs.receive_message(QueueUrl=events)).get("Messages", []):
            assert "s3:TestEvent" in message["Body"]  # S3's, for the notification: not ours
            await clients.sqs.delete_message(QueueUrl=events, ReceiptHandle=message["ReceiptHandle"])
        assert failed(await diagnose(clients, settings)) == {}  # the administrator may do it all
        # A service role may not read the wiring: with its credentials, the dry runs alone.
        anonymous = {"AWS_ACCESS_KEY_ID": "AKIANOBODY0000000000", "AWS_SECRET_ACCESS_KEY": "x"}
    for name, value in anonymous.items():
        monkeypatch.setenv(name, value)
    async with open_clients(settings.aws) as clients:
        found = failed(await diagnose(clients, settings, ("consumer",), wiring=False))
    assert list(found) == ["permissions of the consumer"] and "InvalidAccessKeyId on" in str(found), found

    whole = _user_with(endpoint, admin, "api", _actions("api"))
    for name, value in whole.items():
        monkeypatch.setenv(name, value)
    async with open_clients(settings.aws) as clients:
        findings = await diagnose(clients, settings, ("api",), wiring=False)
    assert [f.check for f in findings] == ["permissions of the api"] and failed(findings) == {}, findings
    assert f"the {len(NEEDS['api'])} actions" in findings[0].detail

    # One action of each service taken away: exactly the needs that use it are refused.
    taken = {"s3:AbortMultipartUpload", "sqs:ReceiveMessage", "sqs:SendMessage", "dynamodb:UpdateItem"}
    for role in ("api", "consumer"):
        key = _user_with(endpoint, admin, f"{role}-short", _actions(role) - taken)
        for name, value in key.items():
            monkeypatch.setenv(name, value)
        async with open_clients(settings.aws) as clients:
            (finding,) = await diagnose(clients, settings, (role,), wiring=False)
        assert not finding.ok
        refused = finding.detail.removeprefix("refused ").split(", ")
        assert set(refused) == {n for n in NEEDS[role] if n.split(" on ")[0] in taken}, finding.detail
    # Nothing was left behind by the dry runs: no object, no upload, no message, no item.
    for name, value in admin.items():
        monkeypatch.setenv(name, value)
    async with open_clients(settings.aws) as clients:
        for bucket in (settings.aws.source_bucket, settings.aws.dest_bucket):
            assert (await clients.s3.list_objects_v2(Bucket=bucket)).get("KeyCount") == 0
            assert not (await clients.s3.list_multipart_uploads(Bucket=bucket)).get("Uploads")
        for queue in (settings.aws.queue_name, settings.aws.outbox_name, settings.aws.dlq_name):
            url = await _queue_url(clients, queue)
            depth = await clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
            counts = {k: v for k, v in depth["Attributes"].items() if k.startswith("ApproximateNumber")}
            assert set(counts.values()) == {"0"}, (queue, counts)
        for table in ("images", "users", "requests", "throttle", "config"):
            scan = await clients.dynamodb.scan(TableName=settings.aws.table(table))
            assert scan["Count"] == 0, (table, scan["Items"])


@pytest.mark.e2e  # a moto server process of its own, and the CLI's
async def test_doctor_for_one_role_prints_its_refusals_and_fails(
    enforcing_moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, admin = enforcing_moto
    env = env_for(endpoint, IMGSVC_MODE="aws")
    for name, value in admin.items():
        monkeypatch.setenv(name, value)
    async with open_clients(Settings.from_env(env).aws) as clients:
        await provision(clients, Settings.from_env(env))
    key = _user_with(endpoint, admin, "consumer", _actions("consumer") - {"s3:PutObject"})
    doctor = await start("-m", "pipeline", "doctor", "--role", "consumer", env=process_env(**env, **key))
    out, err = await asyncio.wait_for(doctor.communicate(), 60)
    assert doctor.returncode == 1, err
    lines = out.decode().splitlines()
    assert lines[0] == "FAIL  permissions of the consumer: refused s3:PutObject on thumbnails", lines
    assert lines[-1].startswith("0 ok, 1 failed"), lines
