"""`python -m pipeline migrate --from-data-dir DIR`: a single box's users, keys, records and
images, moved into AWS (moto), work there as they did: the same key opens the same image."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.cli.main import main
from tests.support.backends import Backend
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import USER, env_for, local_settings

pytestmark = pytest.mark.moto


@pytest.fixture(autouse=True)
def _command_logging() -> Iterator[None]:
    """The command adds its log handler to the root logger, on the captured stderr: removed after."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_image_service", False)]:
        root.removeHandler(handler)


async def test_a_data_directory_moved_to_aws_serves_the_same_images_to_the_same_keys(
    moto_endpoint: str,
    make_client: ClientFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = env_for(moto_endpoint)
    names = {k: v for k, v in env.items() if k.startswith("IMGSVC_") and k != "IMGSVC_MODE"}
    local = local_settings(tmp_path / "data", **names)
    api = await make_client(local, user=None)
    key = bearer(await issue_key(api.server.app, USER))
    photos = {f"p{n}": jpeg_bytes(320 + 16 * n, 240) for n in range(3)}
    for image_id, data in photos.items():
        assert (await api.put(f"/images/{image_id}", data=data, headers=key)).status == 202
    from pipeline.local.backend import open_local

    async with open_local(local) as ports:
        backend = Backend("local", local, ports.storage, ports.main, ports.dlq, ports.tables, ports)
        assert (await consume(backend))["ready"] == len(photos)
    thumbnails = {
        i: await (await api.get(f"/download/thumbnail?image_id={i}", headers=key)).read() for i in photos
    }

    aws = Settings.from_env(env)
    async with open_clients(aws.aws) as clients:
        await provision(clients, aws)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["migrate", "--from-data-dir", str(tmp_path / "data")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["objects"] == 2 * len(photos) and report["already_there"] == 0, (
        report
    )  # originals, renditions
    assert report["items"] >= 2 + len(photos)  # the user, its key, the records (and the link secret)

    there = await make_client(aws, user=None)
    for image_id, data in photos.items():
        record = await (await there.get(f"/images/{image_id}", headers=key)).json()
        assert record["status"] == "ready", record
        assert await (await there.get(f"/download/image?image_id={image_id}", headers=key)).read() == data
        thumbnail = await (await there.get(f"/download/thumbnail?image_id={image_id}", headers=key)).read()
        assert thumbnail == thumbnails[image_id] and decode(thumbnail).size[0] == 256

    assert (
        await asyncio.to_thread(main, ["migrate", "--from-data-dir", str(tmp_path / "data")]) == 0
    )  # again: nothing to copy
    again = json.loads(capsys.readouterr().out)
    assert again["objects"] == 0 and again["already_there"] == 2 * len(photos), again
    assert await asyncio.to_thread(main, ["migrate", "--from-data-dir", str(tmp_path / "nothing")]) == 2
