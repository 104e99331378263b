"""The template's roles allow what the service calls, and nothing it does not.

The stack (the API on ECS, the consumer as a second service) is deployed into moto. Then
`python -m web` and `python -m pipeline consumer` run on what it created, each signing with
credentials of its own, while a client uploads (through the API and through a presigned URL),
waits, downloads, makes variants, public and signed links, a webhook, a failure and a delete. moto
records every request; each is turned into the IAM actions and resources it needs
(`tests.support.aws_calls`) and checked against the deployed role of the process that signed it.
Each action a role grants must have been used by its process, or be named in `NOT_EXERCISED`
with why; and each operation the code calls (read from `pipeline/aws/`) must have been seen, or
be an operator tool's, or be named there too. What the roles grant is also the list the doctor
tries by dry runs (`pipeline.aws.permissions.NEEDS`).
"""

from __future__ import annotations

import ast
import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import open_clients
from pipeline.aws.permissions import NEEDS
from pipeline.aws.provision import provision
from pipeline.backends import open_backend
from pipeline.core.accounts import Accounts
from tests.support.aws_calls import allowed, grants, matches, operations_in_code, recorded_calls
from tests.support.clients import bearer
from tests.support.processes import WebProcess, running, settings_env, stops_cleanly
from tests.support.settings import ROOT, env_for
from tests.support.stacks import cloudformation, deploy_services
from tests.webhook_receiver import serving

pytestmark = [
    pytest.mark.moto,
    # Resources moto's CloudFormation does not implement are skipped by it, with a warning each.
    pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning"),
]

API_KEY_ID = "AKIAIMGSVCAPI0000000"
CONSUMER_KEY_ID = "AKIAIMGSVCCONSUMER00"
#: What a role grants that the scenario does not use, as "action on resource" (a bucket, queue
#: or table of `kind`), and each code operation it does not reach, with why.
NOT_EXERCISED: dict[str, dict[str, str]] = {
    "api": {
        "s3:AbortMultipartUpload on source": "an upload larger than a part, cut off half way",
        "s3:ListMultipartUploadParts on source": "a resumable upload (tests/test_multipart.py)",
    },
    "consumer": {
        "s3:DeleteObject on source": "bytes other than an upload URL allowed (tests/test_presigned.py)",
        "sqs:ChangeMessageVisibility on events": "a retry's backoff, a long job's heartbeat",
        "sqs:ChangeMessageVisibility on outbox": "a webhook receiver that failed, retried later",
        "sqs:SendMessage on outbox-dlq": "a webhook event that used up its attempts",
        "dynamodb:UpdateItem on images": "a job's timeout counted, a duplicate's digest noted",
        "dynamodb:DeleteItem on images": "an image deleted while its job ran",
    },
    # Code operations no service role needs, or reached above only on a rare path.
    "code": {
        "s3:AbortMultipartUpload": "api, above",
        "s3:CompleteMultipartUpload": "api: an upload larger than a part (tests/test_uploads.py)",
        "s3:CreateMultipartUpload": "api: as above",
        "s3:UploadPart": "api: as above",
        "s3:ListMultipartUploads": "operator: gc of abandoned multipart uploads",
        "s3:ListParts": "api, above",
        "sqs:ChangeMessageVisibility": "consumer, above",
        "sqs:PurgeQueue": "operator: `python -m pipeline dlq purge`",
        "dynamodb:Scan": "operator: usage recount, gc, reconcile",
        "dynamodb:CreateTable": "operator: provision",
        "dynamodb:UpdateTimeToLive": "operator: provision",
        "dynamodb:DescribeTable": "operator: provision, doctor",
    },
}
#: What the scenario uses on some runs only. The consumer copies a duplicate's renditions (a read
#: of the first image's) when the duplicate's record was written before its S3 event arrived,
#: and makes them anew otherwise; a job's record write changes the owner's counters in some
#: orders of events only (else a receiver's failures are counted there: webhooks/delivery.py).
RACY = {
    "consumer": {"s3:GetObject on thumbnails", "dynamodb:UpdateItem on users"},
    "code": {"s3:CopyObject"},
}
#: Modules whose calls are operators' (provisioning, diagnosis, the embedded stack), made with
#: the operator's credentials, never a service role's.
OPERATOR_MODULES = {"provision", "doctor", "permissions", "embedded_dynamodb", "embedded"}


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
async def stack(moto_endpoint: str) -> AsyncIterator[tuple[Settings, dict[str, str]]]:
    settings = Settings.from_env(env_for(moto_endpoint))
    resources = await deploy_services(moto_endpoint, settings)
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)  # what moto's CloudFormation leaves out: nothing to add on AWS
    yield settings, resources


def role_policies(endpoint: str, role_name: str) -> list[dict[str, Any]]:
    iam = cloudformation(endpoint, "iam")
    names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    documents = [iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"] for n in names]
    # moto keeps a document made by CloudFormation as Python's repr of it, not as JSON.
    return [ast.literal_eval(d) if isinstance(d, str) else d for d in documents]


async def test_each_role_allows_what_its_process_calls_and_nothing_more(
    moto_endpoint: str,
    stack: tuple[Settings, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, resources = stack
    from moto.moto_api import recorder

    # Operator's work first, under moto's default credentials: the demo user and its key.
    async with open_backend(settings) as backend:
        accounts = Accounts(backend.tables)
        user = await accounts.create_user(name="iam")
        key = (await accounts.issue_key(user)).key

    recording = tmp_path / "requests.jsonl"
    # Where the in-process moto writes (no public setter), one request at a time: moto's threads
    # append unlocked, and two large entries could interleave.
    monkeypatch.setattr(recorder, "_location", str(recording))
    lock, record = threading.Lock(), recorder._record_request

    def one_at_a_time(*args: Any, **kwargs: Any) -> None:
        with lock:
            record(*args, **kwargs)

    monkeypatch.setattr(recorder, "_record_request", one_at_a_time)
    recorder.reset_recording()
    recorder.start_recording()
    try:
        await _scenario(settings, key, tmp_path)
    finally:
        recorder.stop_recording()
    calls = recorded_calls(recording)
    by_role = {
        "api": [c for c in calls if c.key_id == API_KEY_ID],
        "consumer": [c for c in calls if c.key_id == CONSUMER_KEY_ID],
    }
    roles = {"api": resources["ApiTaskRole"], "consumer": resources["ConsumerRole"]}
    kind = kinds(settings)
    for role, made in by_role.items():
        assert made, f"no request was signed as the {role}"
        policies = role_policies(moto_endpoint, roles[role])
        refused = {(c.action, c.resource) for c in made if not allowed(policies, c.action, c.resource)}
        assert not refused, f"the {role} role refuses calls its process made: {sorted(refused)}"
        unused = {
            f"{action} on {kind(resource)}"
            for action, resource in grants(policies)
            if not any(matches(action, resource, c.action, c.resource) for c in made)
        }
        excused = set(NOT_EXERCISED[role]) | RACY.get(role, set())
        assert unused <= excused, f"{role}: granted, never used: {unused - excused}"
        # A rare path may happen to be taken (a receiver slow under load): each must be granted.
        granted = {f"{action} on {kind(resource)}" for action, resource in grants(policies)}
        assert excused <= granted, f"{role}: not granted, drop from NOT_EXERCISED: {excused - granted}"
        # What `python -m pipeline doctor` tries by dry runs is what the role grants.
        assert granted == NEEDS[role], (sorted(granted - NEEDS[role]), sorted(NEEDS[role] - granted))
    seen = {c.operation for c in calls}
    in_code = operations_in_code()
    for operation, modules in in_code.items():
        if operation.split(":")[1] in seen or modules <= OPERATOR_MODULES:
            continue
        assert operation in NOT_EXERCISED["code"].keys() | RACY["code"], (
            f"{operation} (in {sorted(modules)}): never seen nor explained"
        )
    stale = (NOT_EXERCISED["code"].keys() | RACY["code"]) - in_code.keys()
    assert not stale, f"no longer in the code, drop from NOT_EXERCISED: {stale}"


def kinds(settings: Settings) -> Callable[[str], str]:
    """What an ARN (or a pattern of them) names among `settings`' resources."""
    aws = settings.aws
    names = {
        aws.source_bucket: "source",
        aws.dest_bucket: "thumbnails",
        aws.queue_name: "events",
        aws.dlq_name: "dlq",
        aws.outbox_name: "outbox",
        aws.outbox_dlq_name: "outbox-dlq",
    }

    def kind(arn: str) -> str:
        name = arn.rsplit(":", maxsplit=1)[-1].removeprefix("table/").split("/")[0]
        return names.get(name) or name.removeprefix(f"{aws.table_prefix}-")

    return kind


async def _scenario(settings: Settings, key: str, tmp_path: Path) -> None:
    """The API and the consumer at work, each under its own credentials."""
    base = settings_env(
        settings,
        IMGSVC_MODE="aws",
        AWS_SECRET_ACCESS_KEY="secret",
        IMGSVC_UPLOAD_MODES="api,presigned",
        IMGSVC_WEBHOOK_ALLOW_PRIVATE="true",
    )
    consumer_env = base | {"AWS_ACCESS_KEY_ID": CONSUMER_KEY_ID}
    api_env = base | {"AWS_ACCESS_KEY_ID": API_KEY_ID, "IMGSVC_RUN_CONSUMER": "false"}
    photo, cat = jpeg(640, 480), (ROOT / "input" / "cat.jpg").read_bytes()
    async with (
        serving() as receiver,
        running("-m", "pipeline", "consumer", env=consumer_env) as consumer,
        WebProcess(log=tmp_path / "web.log", env=api_env) as api,
        aiohttp.ClientSession(api.url, headers=bearer(key)) as client,
    ):
        assert (await client.put("/webhook", json={"url": receiver.url})).status == 200
        once = {"Idempotency-Key": "iam-photo-1"}
        assert (await client.put("/images/photo", data=photo, headers=once)).status == 202
        assert (await client.put("/images/photo", data=photo, headers=once)).status == 202  # replayed
        async with aiohttp.ClientSession(api.url, headers=bearer("not-a-key")) as stranger:
            assert (await stranger.get("/images")).status == 401  # counted against its address
        assert (await client.put("/images/broken", data=cat[:5000])).status == 202
        asked = await client.post(
            "/images/upload-url", json={"content_length": len(cat), "content_type": "image/jpeg"}
        )
        answer = await asked.json()
        async with aiohttp.ClientSession() as anyone:
            put = await anyone.put(answer["url"], data=cat, headers=answer["headers"])
            assert put.status == 200, await put.text()
        for image in ("photo", answer["image_id"]):
            done = await (await client.get(f"/images/{image}?wait=20")).json()
            assert done["status"] == "ready", done
        assert (await client.put("/images/again", data=photo)).status == 202  # the same bytes: copied
        done = await (await client.get("/images/again?wait=20")).json()
        assert done["status"] == "ready", done
        assert (await (await client.get("/images/broken?wait=20")).json())["status"] == "failed"
        assert (await client.get("/images/photo/variant?w=100&format=webp")).status == 200
        assert (await client.get("/images")).status == 200
        link = await (await client.get("/images/photo/url?rendition=256")).json()
        made_public = await (await client.patch("/images/photo", json={"public": True})).json()
        async with aiohttp.ClientSession() as anyone:
            assert (await anyone.get(link["url"])).status == 200
            for url in made_public["public_urls"].values():
                assert (await anyone.get(url)).status == 200, url
        assert (await client.delete("/images/again")).status in (200, 204)
        async with asyncio.timeout(30):
            while len(receiver.calls) < 4:  # ready x3, failed; deleted goes through the outbox too
                await asyncio.sleep(0.1)
        assert await stops_cleanly(consumer)
