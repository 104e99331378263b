"""config/cloudformation.yaml: cfn-lint passes, it describes what `provision` creates, and it deploys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import cfn_yaml

from config.settings import ConsumerSettings, Settings, WebhookSettings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.core.topology import MAX_RECEIVES, RETENTION_SECONDS, SPECS, lease_seconds
from tests.support.settings import ROOT, env_for

TEMPLATE = ROOT / "config" / "cloudformation.yaml"


def resources() -> dict[str, Any]:
    template: dict[str, Any] = cfn_yaml.load(str(TEMPLATE))
    return {name: r for name, r in template["Resources"].items()}


@pytest.mark.slow
def test_cfn_lint_passes() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_tables_match_the_code() -> None:
    """Same tables, keys, indexes and TTL as `pipeline.aws.tables.SPECS` (what `provision` creates)."""
    tables = {
        r["Properties"]["TableName"]["Fn::Sub"].removeprefix("${TablePrefix}-"): r["Properties"]
        for r in resources().values()
        if r["Type"] == "AWS::DynamoDB::Table"
    }
    assert set(tables) == {spec.name for spec in SPECS}
    for spec in SPECS:
        props = tables[spec.name]
        key = [k["AttributeName"] for k in props["KeySchema"]]
        assert key == list(spec.key), spec.name
        indexes = {
            i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]]
            for i in props.get("GlobalSecondaryIndexes", [])
        }
        assert indexes == {name: list(k) for name, k in spec.indexes.items()}, spec.name
        ttl = props.get("TimeToLiveSpecification", {}).get("AttributeName")
        assert ttl == spec.ttl_attribute and props["SSESpecification"] == {"SSEEnabled": True}


def test_template_queues_and_buckets_match_the_code() -> None:
    r = resources()
    template = cfn_yaml.load(str(TEMPLATE))
    assert (
        int(template["Parameters"]["MaxReceiveCount"]["Default"])
        == ConsumerSettings().redrive_max_receive_count
    )
    assert r["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == 1209600
    source = r["SourceBucket"]["Properties"]
    assert source["NotificationConfiguration"]["QueueConfigurations"][0]["Event"] == "s3:ObjectCreated:*"
    for bucket in ("SourceBucket", "ThumbnailBucket"):
        props = r[bucket]["Properties"]
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["LifecycleConfiguration"]["Rules"][0]["AbortIncompleteMultipartUpload"] == {
            "DaysAfterInitiation": 1
        }
    defaults = Settings.from_env({}).aws
    params = template["Parameters"]
    assert params["SourceBucketName"]["Default"] == defaults.source_bucket
    assert params["ThumbnailBucketName"]["Default"] == defaults.dest_bucket
    assert params["QueueName"]["Default"] == defaults.queue_name
    assert params["DeadLetterQueueName"]["Default"] == defaults.dlq_name
    assert params["OutboxName"]["Default"] == defaults.outbox_name
    assert params["OutboxDeadLetterQueueName"]["Default"] == defaults.outbox_dlq_name
    outbox = r["OutboxQueue"]["Properties"]
    # A fleet's lease; Lambda's event source needs the function's timeout covered.
    assert outbox["VisibilityTimeout"] == {"Fn::If": ["UseLambda", {"Ref": "VisibilityTimeout"}, 15]}
    assert lease_seconds(WebhookSettings()) == 15
    assert outbox["RedrivePolicy"]["maxReceiveCount"] == MAX_RECEIVES
    for queue in ("OutboxQueue", "OutboxDeadLetterQueue"):
        assert r[queue]["Properties"]["MessageRetentionPeriod"] == RETENTION_SECONDS
    assert r["OutboxEventSource"]["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["OutboxQueue", "Arn"]}
    assert params["TablePrefix"]["Default"] == defaults.table_prefix


# moto's CloudFormation does not implement AWS::SQS::QueuePolicy and says so with a warning (the
# suite turns warnings into errors); `provision` below sets the same policy on the queue.
@pytest.mark.filterwarnings("ignore:Tried to parse AWS.*QueuePolicy:UserWarning")
async def test_template_deploys_and_provision_agrees(moto_endpoint: str) -> None:
    """Deploy the stack into the moto server, then `provision` the same names: nothing to add."""
    env = env_for(moto_endpoint)
    settings = Settings.from_env(env)
    aws = settings.aws
    cfn = boto3.client(
        "cloudformation",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    parameters = {
        "SourceBucketName": aws.source_bucket,
        "ThumbnailBucketName": aws.dest_bucket,
        "QueueName": aws.queue_name,
        "DeadLetterQueueName": aws.dlq_name,
        "OutboxName": aws.outbox_name,
        "OutboxDeadLetterQueueName": aws.outbox_dlq_name,
        "TablePrefix": aws.table_prefix,
    }
    name = f"imgsvc-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(
        cfn.create_stack,
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = (await asyncio.to_thread(cfn.describe_stacks, StackName=name))["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    async with open_clients(aws) as clients:
        for spec in SPECS:
            described = (await clients.dynamodb.describe_table(TableName=aws.table(spec.name)))["Table"]
            assert [k["AttributeName"] for k in described["KeySchema"]] == list(spec.key)
        queue_url = (await clients.sqs.get_queue_url(QueueName=aws.queue_name))["QueueUrl"]
        attributes = (
            await clients.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
        )["Attributes"]
        assert (
            '"maxReceiveCount": 7' in attributes["RedrivePolicy"].replace("'", '"')
            or "7" in attributes["RedrivePolicy"]
        )
        provisioned = await provision(clients, settings)  # on top of the stack: idempotent
        assert provisioned.queue_url == queue_url
