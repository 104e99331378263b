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

from config.settings import Settings, WebhookSettings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.core.topology import SPECS, lease_seconds, topology
from tests.support.settings import ROOT, env_for

TEMPLATE = ROOT / "config" / "cloudformation.yaml"


def template_of() -> dict[str, Any]:
    # 0.8 s to import: only where a template test runs. Not in the fast tier's install.
    cfn_yaml = pytest.importorskip("cfnlint.decode.cfn_yaml", reason="cfn-lint is in the test extra")

    loaded: dict[str, Any] = cfn_yaml.load(str(TEMPLATE))
    return loaded


def resources() -> dict[str, Any]:
    template = template_of()
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


def test_template_queues_and_buckets_are_the_topology() -> None:
    """The template's queues are `topology`'s, each with the same dead-letter queue, receives,
    retention and lease (where the template leaves the lease to a parameter, for the Lambda
    function's timeout, its default covers the consumer's); its buckets and names too."""
    r = resources()
    template = template_of()
    params = template["Parameters"]

    def value(node: Any) -> Any:
        """A property as deployed with the default parameters (a fleet's branch of the conditions)."""
        if isinstance(node, dict) and "Ref" in node:
            return (
                int(params[node["Ref"]]["Default"])
                if params[node["Ref"]]["Type"] == "Number"
                else params[node["Ref"]]["Default"]
            )
        if isinstance(node, dict) and "Fn::If" in node:
            return value(node["Fn::If"][2])
        return node

    plan = topology(Settings.from_env({}))
    queues = {
        value(res["Properties"]["QueueName"]): (logical, res["Properties"])
        for logical, res in r.items()
        if res["Type"] == "AWS::SQS::Queue"
    }
    assert set(queues) == {spec.name for spec in plan.queues}
    for spec in plan.queues:
        logical, props = queues[spec.name]
        assert props.get("MessageRetentionPeriod") == spec.retention_seconds, logical
        assert value(props.get("VisibilityTimeout", 30)) >= spec.visibility_timeout, logical
        redrive = props.get("RedrivePolicy")
        if spec.dead_letter is None:
            assert redrive is None, logical
            continue
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [queues[spec.dead_letter][0], "Arn"]}
        assert value(redrive["maxReceiveCount"]) == spec.max_receive_count, logical
    # A fleet's outbox lease is the deliverer's; Lambda's event source needs the function's timeout.
    assert r["OutboxQueue"]["Properties"]["VisibilityTimeout"]["Fn::If"][2] == lease_seconds(
        WebhookSettings()
    )
    assert value(r["SourceBucket"]["Properties"]["BucketName"]) == plan.source_bucket
    assert value(r["ThumbnailBucket"]["Properties"]["BucketName"]) == plan.dest_bucket
    notified = r["SourceBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"][0]
    assert notified["Event"] == "s3:ObjectCreated:*"
    assert notified["Queue"] == {"Fn::GetAtt": [queues[plan.notified_queue][0], "Arn"]}
    for bucket in ("SourceBucket", "ThumbnailBucket"):
        props = r[bucket]["Properties"]
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["LifecycleConfiguration"]["Rules"][0]["AbortIncompleteMultipartUpload"] == {
            "DaysAfterInitiation": 1
        }
    assert r["OutboxEventSource"]["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["OutboxQueue", "Arn"]}
    assert params["TablePrefix"]["Default"] == Settings.from_env({}).aws.table_prefix


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
