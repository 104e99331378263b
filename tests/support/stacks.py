"""config/cloudformation.yaml deployed into the tests' moto, under a stack name of its own."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from config.settings import Settings
from tests.support.settings import ROOT

TEMPLATE = ROOT / "config" / "cloudformation.yaml"


def cloudformation(endpoint: str, service: str = "cloudformation") -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def stack_parameters(settings: Settings) -> dict[str, str]:
    """The template's names of `settings`' resources."""
    aws = settings.aws
    return {
        "SourceBucketName": aws.source_bucket,
        "ThumbnailBucketName": aws.dest_bucket,
        "QueueName": aws.queue_name,
        "DeadLetterQueueName": aws.dlq_name,
        "OutboxName": aws.outbox_name,
        "OutboxDeadLetterQueueName": aws.outbox_dlq_name,
        "TablePrefix": aws.table_prefix,
    }


async def deploy(endpoint: str, settings: Settings, **parameters: str) -> dict[str, str]:
    """Create the stack for `settings`' names (and `parameters`); its resources' physical ids by
    logical id, once it is `CREATE_COMPLETE`."""
    cfn = cloudformation(endpoint)
    name = f"imgsvc-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(
        cfn.create_stack,
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v}
            for k, v in (stack_parameters(settings) | parameters).items()
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = (await asyncio.to_thread(cfn.describe_stacks, StackName=name))["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    listed = await asyncio.to_thread(cfn.list_stack_resources, StackName=name)
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in listed["StackResourceSummaries"]}


async def deploy_services(endpoint: str, settings: Settings, **parameters: str) -> dict[str, str]:
    """`deploy` with the API and the consumer as ECS services (`ConsumerMode=ecs`), in moto's
    default VPC and two of its subnets."""
    ec2 = cloudformation(endpoint, "ec2")
    vpc = (await asyncio.to_thread(ec2.describe_vpcs))["Vpcs"][0]
    subnets = ",".join(s["SubnetId"] for s in (await asyncio.to_thread(ec2.describe_subnets))["Subnets"][:2])
    network = {
        "VpcId": vpc["VpcId"],
        "VpcCidr": vpc["CidrBlock"],
        "PublicSubnetIds": subnets,
        "TaskSubnetIds": subnets,
    }
    return await deploy(
        endpoint,
        settings,
        ApiImage="registry.example/image-service:test",
        ConsumerMode="ecs",
        **network | parameters,
    )
