"""The Lambda variant: an SQS event in, `batchItemFailures` out, with the consumer's rules."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.consumer import lambda_handler
from scripts import lambda_package
from tests.support.consumers import sqs_event
from tests.support.images import decode, jpeg_bytes
from tests.support.processes import settings_env
from tests.support.settings import USER
from tests.support.state import dlq_messages, record_of

GOOD = jpeg_bytes(320, 240)


async def test_lambda_makes_thumbnails_and_dead_letters_bad_images(
    clients: AwsClients, settings: Settings
) -> None:
    for key, body in ((f"{USER}/good", GOOD), (f"{USER}/bad", GOOD[:400])):
        await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=key, Body=body)
    answer = await lambda_handler.handle_event(await sqs_event(clients, settings, 2), settings)
    assert answer == {"batchItemFailures": []}  # both are done with: one made, one dead-lettered
    good = await record_of(clients, settings, f"{USER}/good")
    assert good is not None and good.state == "ready"
    thumb = await clients.s3.get_object(Bucket=settings.aws.dest_bucket, Key=f"{USER}/good/256.jpg")
    assert decode(await thumb["Body"].read()).size == (256, 192)
    (letter,) = await dlq_messages(clients, settings)
    assert letter.attributes["error_code"] == "corrupt_image" and letter.attributes["attempts"] == "1"


@pytest.mark.parametrize(("receive_count", "retried"), [(1, True), (3, False)])
async def test_lambda_retries_transient_failures_until_max_attempts(
    clients: AwsClients, settings: Settings, receive_count: int, retried: bool
) -> None:
    await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=f"{USER}/later", Body=GOOD)
    event = await sqs_event(clients, settings, 1, receive_count)
    await clients.s3.delete_bucket(Bucket=settings.aws.dest_bucket)  # S3 fails the job
    answer = await lambda_handler.handle_event(event, settings)
    message_id = event["Records"][0]["messageId"]
    if retried:  # only this record goes back to SQS (ReportBatchItemFailures)
        assert answer == {"batchItemFailures": [{"itemIdentifier": message_id}]}
        assert await dlq_messages(clients, settings) == []
    else:  # max attempts (3 in the tests): dead-lettered with the reason, not retried
        assert answer == {"batchItemFailures": []}
        (letter,) = await dlq_messages(clients, settings)
        assert letter.attributes["error_code"] == "storage_unavailable"


async def test_handler_entry_point_reads_its_settings_from_the_environment(
    clients: AwsClients, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=f"{USER}/via-handler", Body=GOOD)
    event = await sqs_event(clients, settings, 1)
    try:
        answer = await asyncio.to_thread(lambda_handler.handler, event, None)  # called synchronously
        assert answer == {"batchItemFailures": []}
        record = await record_of(clients, settings, f"{USER}/via-handler")
        assert record is not None and record.state == "ready"
        warm = lambda_handler._Warm.function
        await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=f"{USER}/warm", Body=GOOD)
        answer = await asyncio.to_thread(lambda_handler.handler, await sqs_event(clients, settings, 1), None)
        assert answer == {"batchItemFailures": []}
        assert lambda_handler._Warm.function is warm  # a warm container reuses loop, clients, runner
        record = await record_of(clients, settings, f"{USER}/warm")
        assert record is not None and record.state == "ready"
    finally:
        await asyncio.to_thread(lambda_handler.shutdown)


def lambda_python() -> Path | None:
    """An interpreter of the function's runtime (pyenv's, as on these machines and in CI)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(root.glob(f"versions/{lambda_package.PYTHON}.*/bin/python{lambda_package.PYTHON}"))
    return found[-1] if found else None


@pytest.mark.slow
async def test_the_deployment_package_runs_the_handler_on_its_own(
    clients: AwsClients, settings: Settings, tmp_path: Path
) -> None:
    """`make lambda-package`'s zip, unpacked and run by the runtime's Python with nothing else on its
    path (no site-packages, no checkout), turns a real SQS event into a ready image."""
    python = lambda_python()
    if python is None:
        pytest.skip(f"no Python {lambda_package.PYTHON} here")
    archive = tmp_path / "package.zip"
    await asyncio.to_thread(lambda_package.build, archive)
    unpacked = tmp_path / "task"
    zipfile.ZipFile(archive).extractall(unpacked)
    await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=f"{USER}/packaged", Body=GOOD)
    event = await sqs_event(clients, settings, 1)
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1]];"
        "from pipeline.consumer.lambda_handler import handler, shutdown;"
        "print(json.dumps(handler(json.load(sys.stdin), None))); shutdown()"
    )
    env = settings_env(settings) | {"PATH": "/usr/bin:/bin"}
    run = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-I", "-S", "-c", code, str(unpacked)],
        input=json.dumps(event),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"batchItemFailures": []}
    record = await record_of(clients, settings, f"{USER}/packaged")
    assert record is not None and record.state == "ready"
