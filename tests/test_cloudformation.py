"""config/cloudformation.yaml: cfn-lint passes, it describes what `provision` creates, and it deploys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, WebhookSettings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.core.topology import SPECS, lease_seconds, topology
from tests.support.settings import env_for
from tests.support.stacks import TEMPLATE, cloudformation, deploy, deploy_services


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
    settings = Settings.from_env(env_for(moto_endpoint))
    aws = settings.aws
    await deploy(moto_endpoint, settings)
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


@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
async def test_the_api_and_the_consumer_deploy_as_services_behind_a_load_balancer(moto_endpoint: str) -> None:
    """With an image: an ECS cluster running the API (behind the load balancer, whose health check
    is the admin listener's readiness) and the consumer; each task runs under its own role. (moto's
    CloudFormation skips the autoscaling resources and CloudFront, with a warning each.)"""
    settings = Settings.from_env(env_for(moto_endpoint))
    acm = cloudformation(moto_endpoint, "acm")
    certificate = acm.request_certificate(DomainName="images.example.com")["CertificateArn"]
    made = await deploy_services(moto_endpoint, settings, CertificateArn=certificate)
    ecs, elb = cloudformation(moto_endpoint, "ecs"), cloudformation(moto_endpoint, "elbv2")
    # moto lists some of the stack's resources without their logical ids: found by their cluster.
    arns = ecs.list_services(cluster=made["Cluster"])["serviceArns"]
    services = ecs.describe_services(cluster=made["Cluster"], services=arns)["services"]
    tasks = {}
    for service in services:
        task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        tasks[task["family"].rsplit("-", 1)[1]] = (service, task)
    (_, api_task), (_, consumer_task) = tasks["api"], tasks["consumer"]
    template = resources()  # moto keeps neither launch type, compatibilities nor network mode
    for name in ("ApiTaskDefinition", "ConsumerTaskDefinition"):
        props = template[name]["Properties"]
        assert (props["RequiresCompatibilities"], props["NetworkMode"]) == (["FARGATE"], "awsvpc")
    assert template["ApiService"]["Properties"]["LoadBalancers"][0]["ContainerPort"] == 8080
    assert "LoadBalancers" not in template["ConsumerService"]["Properties"]
    assert api_task["containerDefinitions"][0]["command"][:3] == ["python", "-m", "web"]
    assert consumer_task["containerDefinitions"][0]["command"] == ["python", "-m", "pipeline", "consumer"]
    roles = {
        name: template[name]["Properties"]["TaskRoleArn"]
        for name in ("ApiTaskDefinition", "ConsumerTaskDefinition")
    }
    assert roles == {
        "ApiTaskDefinition": {"Fn::GetAtt": ["ApiTaskRole", "Arn"]},
        "ConsumerTaskDefinition": {"Fn::GetAtt": ["ConsumerRole", "Arn"]},
    }
    (group,) = elb.describe_target_groups(TargetGroupArns=[made["ApiTargetGroup"]])["TargetGroups"]
    assert (group["HealthCheckPort"], group["HealthCheckPath"]) == ("8081", "/health/ready")
    listeners = elb.describe_listeners(LoadBalancerArn=made["LoadBalancer"])["Listeners"]
    by_port = {listener["Port"]: listener for listener in listeners}
    assert by_port[443]["Protocol"] == "HTTPS" and by_port[443]["Certificates"]
    assert by_port[80]["DefaultActions"][0]["Type"] == "redirect"


def test_the_cdn_caches_public_urls_by_path_and_accept_only_where_negotiated() -> None:
    """docs/delivery.md's rules, as CloudFront behaviours (moto has no CloudFront to deploy to)."""
    r = resources()
    config = r["DeliveryDistribution"]["Properties"]["DistributionConfig"]
    behaviours = [(b["PathPattern"], b["CachePolicyId"]["Ref"]) for b in config["CacheBehaviors"]]
    assert behaviours == [("/p/*.auto", "NegotiatedCachePolicy"), ("/p/*", "DeliveryCachePolicy")]

    def keyed_on(policy: str) -> tuple[Any, Any, Any]:
        params = r[policy]["Properties"]["CachePolicyConfig"]["ParametersInCacheKeyAndForwardedToOrigin"]
        return (
            params["HeadersConfig"].get("Headers"),
            params["QueryStringsConfig"]["QueryStringBehavior"],
            params["CookiesConfig"]["CookieBehavior"],
        )

    assert keyed_on("NegotiatedCachePolicy") == (["Accept"], "all", "none")
    assert keyed_on("DeliveryCachePolicy") == (None, "all", "none")
    default = config["DefaultCacheBehavior"]
    assert default["CachePolicyId"] == "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"  # Managed-CachingDisabled
    assert "OriginShield" in config["Origins"][0]
