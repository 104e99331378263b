"""The entry points as a user runs them: `python -m web` and `python -m pipeline ...`, as processes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import boto3
import pytest

from config.settings import SEED_USER_IDS, Settings
from pipeline.aws.clients import AwsClients
from pipeline.core.demo import read_demo_keys
from scripts.stack import free_port
from tests.support.clients import bearer, sync_s3
from tests.support.images import decode
from tests.support.processes import WebProcess, process_env, run, settings_env, start
from tests.support.settings import ROOT, USER, env_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "web", "--help"],
        ["-m", "pipeline", "--help"],
        ["-m", "pipeline", "consumer", "--help"],
        ["-m", "pipeline", "provision", "--help"],
        ["-m", "pipeline", "dlq", "--help"],
        ["-m", "pipeline", "dlq", "redrive", "--help"],
    ],
)
def test_help(args: list[str]) -> None:
    result = run(args, {})
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("args", [["-m", "web"], ["-m", "pipeline", "provision"]])
def test_bad_setting_fails_at_start_naming_the_variable(args: list[str]) -> None:
    result = run(args, {"IMGSVC_CONSUMER_MAX_ATTEMPTS": "lots"})
    assert result.returncode == 2
    assert "IMGSVC_CONSUMER_MAX_ATTEMPTS" in result.stderr and "Traceback" not in result.stderr


def test_provision_consumer_and_dlq_commands(moto_endpoint: str) -> None:
    env = env_for(
        moto_endpoint, IMGSVC_MODE="aws", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"
    )
    for _ in range(2):  # idempotent
        result = run(["-m", "pipeline", "provision"], env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["source_bucket"] == env["IMGSVC_SOURCE_BUCKET"]
    # Objects put straight into the bucket are processed under a known user's id only.
    assert run(["-m", "pipeline", "users", "create", "--user-id", USER], env).returncode == 0

    s3 = sync_s3(moto_endpoint)
    s3.put_object(
        Bucket=env["IMGSVC_SOURCE_BUCKET"], Key=f"{USER}/cat", Body=(ROOT / "input" / "cat.jpg").read_bytes()
    )
    s3.put_object(Bucket=env["IMGSVC_SOURCE_BUCKET"], Key=f"{USER}/notes", Body=b"plain text, not a picture")

    result = run(["-m", "pipeline", "consumer", "--burst"], env)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])["outcomes"]
    assert outcomes["ready"] == 1 and outcomes["dead_lettered"] == 1
    assert "outcome=ready" in result.stderr  # one log line per message

    for _ in range(2):  # listing hands every message back at once: a second listing sees it too
        listed = run(["-m", "pipeline", "dlq", "list", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        (letter,) = json.loads(listed.stdout)
        assert letter["error_code"] == "not_an_image" and letter["keys"] == [f"{USER}/notes"]

    # Whatever lands in the DLQ can be listed: deeply nested, huge, not JSON, control characters.
    sqs = boto3.client("sqs", **_boto_args(env))
    dlq_url = sqs.get_queue_url(QueueName=env["IMGSVC_DLQ_NAME"])["QueueUrl"]
    for body in ("[" * 50_000 + "]" * 50_000, "x" * 200_000, "\x1b[31mred\r\n", '{"Records": 5}'):
        sqs.send_message(QueueUrl=dlq_url, MessageBody=body)
    listed = run(["-m", "pipeline", "dlq", "list"], env)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "5 message(s) in the DLQ" in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) < 400  # bodies shown truncated
    assert "\x1b" not in listed.stdout

    refused = run(["-m", "pipeline", "dlq", "purge"], env)
    assert refused.returncode == 2
    purged = run(["-m", "pipeline", "dlq", "purge", "--yes"], env)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(run(["-m", "pipeline", "dlq", "list", "--json"], env).stdout) == []


def _boto_args(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


@pytest.mark.parametrize("args", [["dlq", "list"], ["users", "list"], ["provision"]])
def test_tools_without_an_endpoint_say_which_variable_to_set(args: list[str]) -> None:
    result = run(["-m", "pipeline", *args], {"IMGSVC_EMBEDDED_PORT": "9"}, timeout=20)
    assert result.returncode == 1
    assert "IMGSVC_EMBEDDED_PORT" in result.stderr and "AWS_ENDPOINT_URL" in result.stderr
    assert "Traceback" not in result.stderr


async def test_python_m_web_runs_everything_in_one_command(tmp_path: Path) -> None:
    """No AWS configured: the embedded endpoint, provisioning, demo users, API and consumer all start."""
    keys_file = tmp_path / "keys.json"
    env = process_env(IMGSVC_DEMO_KEYS_FILE=str(keys_file))
    async with WebProcess("--embedded-port", "0", env=env, log=tmp_path / "web.log") as web:
        log = web.text
        assert "embedded AWS endpoint url=http://127.0.0.1:" in log and "in memory only" in log
        assert "(S3, SQS and DynamoDB;" in log
        assert len(re.findall(r"provisioned source=", log)) == 1  # once, not by the app again
        # A key for each of the five demo users, printed and written to a file only its owner reads.
        printed = dict(re.findall(r"demo user user_id=(\S+) key=(\S+)", log))
        assert printed == read_demo_keys(keys_file) and set(printed) == set(SEED_USER_IDS)
        assert keys_file.stat().st_mode & 0o777 == 0o600
        async with aiohttp.ClientSession(web.url, headers=bearer(printed[USER])) as session:
            response = await session.post("/upload", json={"file_name": "dog.jpg", "user_id": USER})
            assert response.status == 202
            async with asyncio.timeout(30):
                while True:
                    thumb = await session.get(f"/download/thumbnail?user_id={USER}&image_id=dog")
                    if thumb.status == 200:
                        break
                    assert thumb.status == 404
                    await asyncio.sleep(0.2)
            assert decode(await thumb.read()).size == (256, 192)
        assert await web.stop() == 0


async def test_consumer_cli_against_running_embedded_endpoint(
    clients: AwsClients, settings: Settings
) -> None:
    """`python -m pipeline consumer` scales out against the same endpoint as separate processes."""
    env = settings_env(settings)
    await clients.s3.put_object(
        Bucket=settings.aws.source_bucket, Key=f"{USER}/cat", Body=(ROOT / "input" / "cat.jpg").read_bytes()
    )
    processes = [await start("-m", "pipeline", "consumer", "--burst", env=env) for _ in range(2)]
    outputs = []
    async with asyncio.timeout(60):
        for process in processes:
            out, err = await process.communicate()
            assert process.returncode == 0, err.decode()
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert sum(o["outcomes"].get("ready", 0) for o in outputs) == 1
    thumb = await clients.s3.get_object(Bucket=settings.aws.dest_bucket, Key=f"{USER}/cat/256.jpg")
    assert decode(await thumb["Body"].read()).size == (256, 170)


def endpoint_only(web: WebProcess) -> bool:
    """`--embedded-only` is ready: the endpoint is provisioned and nothing else will start."""
    return "endpoint only" in web.text


async def test_embedded_only_runs_a_provisioned_endpoint_and_nothing_else(tmp_path: Path) -> None:
    args = ("--embedded-only", "--embedded-port", "0")
    async with WebProcess(*args, log=tmp_path / "web.log", ready=endpoint_only) as web:
        assert "API listening" not in web.text
        s3 = sync_s3(web.endpoint_url)
        names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert {"image-service-source", "image-service-thumbnails"} <= names
        assert await web.stop(timeout=15) == 0


async def test_the_embedded_endpoint_keeps_connections_and_dies_with_its_process(tmp_path: Path) -> None:
    """The endpoint is moto behind granian in a child process: keep-alive (one connection serves
    many calls), and a `kill -9` of `python -m web` takes it along (its port is free again)."""
    args = ("--embedded-only", "--embedded-port", "0")
    async with WebProcess(*args, log=tmp_path / "web.log", ready=endpoint_only) as web:
        endpoint = web.endpoint_url
        host, port = urlsplit(endpoint).hostname, urlsplit(endpoint).port
        opened: list[object] = []
        tracing = aiohttp.TraceConfig()

        async def counted(*_: object) -> None:
            opened.append(None)

        tracing.on_connection_create_end.append(counted)
        async with aiohttp.ClientSession(trace_configs=[tracing]) as session:
            for _ in range(3):  # S3 ListObjects, as any client would send it (moto does not check auth)
                async with session.get(f"{endpoint}/image-service-source") as response:
                    assert response.status == 200 and b"ListBucketResult" in await response.read()
        assert len(opened) == 1  # werkzeug's server, before, answered each with Connection: close
        await web.kill()
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                break  # refused: nothing listens there any more
            writer.close()
            await asyncio.sleep(0.1)


def test_both_entry_points_say_their_version() -> None:
    """The version is the installed package's, one number in pyproject.toml."""
    from importlib.metadata import version

    for module in ("web", "pipeline"):
        command = [sys.executable, "-m", module, "--version"]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        assert out.stdout.strip() == f"python -m {module} {version('image-service')}"


def test_data_dir_goes_before_or_after_the_command(tmp_path: Path) -> None:
    """People type `users create --name carol --data-dir X`: the flag works after the command too."""
    data = tmp_path / "data"
    env: dict[str, str] = {}
    created = run(["-m", "pipeline", "users", "create", "--name", "carol", "--data-dir", str(data)], env)
    assert created.returncode == 0, created.stderr[-2000:]
    listed = run(["-m", "pipeline", "--data-dir", str(data), "users", "list"], env)
    assert listed.returncode == 0 and "carol" in listed.stdout, listed.stderr[-2000:]
    assert (data / "state.db").exists()


def test_no_endpoint_says_how_to_reach_each_backend() -> None:
    """Without AWS, a data directory or a running `python -m web`: one line naming all three."""
    out = run(["-m", "pipeline", "users", "list"], {"IMGSVC_EMBEDDED_PORT": str(free_port())})
    assert out.returncode != 0
    assert "--data-dir" in out.stderr and "AWS_ENDPOINT_URL" in out.stderr and "Traceback" not in out.stderr
