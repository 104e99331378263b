"""The operator's command line (`python -m pipeline`), run in-process on a data directory: what
each command prints and changes. `tests/test_cli.py` starts it as a process, on both backends."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from pipeline.backends import open_backend
from pipeline.cli.main import main
from pipeline.core.accounts import Accounts
from pipeline.core.dlq import dead_letter_attributes
from pipeline.webhooks.delivery import Event
from pipeline.webhooks.envelope import Envelope
from tests.support.settings import USER, local_settings

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """`python -m pipeline --data-dir DATA ARGS...` in this process: exit code, stdout, stderr."""
    for name, value in {"IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1", "IMGSVC_METRICS_PORT": "0"}.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--data-dir", str(data), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    root = logging.getLogger()  # the command added its handler on the captured stderr
    for handler in [h for h in root.handlers if getattr(h, "_image_service", False)]:
        root.removeHandler(handler)


def put_straight(settings: Settings, key: str, data: bytes) -> None:
    """An object put into the source bucket by another tool (its event is queued)."""

    async def put() -> None:
        async with open_backend(settings) as ports:
            await Accounts(ports.tables).create_user(USER)
            await ports.storage.put(settings.aws.source_bucket, key, data, "application/octet-stream")

    asyncio.run(put())


def test_users_keys_and_their_settings(cli: Cli) -> None:
    code, out, _ = cli("users", "create", "--name", "carol")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith("isk_") and "shown once" in created["note"]
    user, key_id = created["user_id"], created["key_id"]

    code, out, _ = cli("users", "list")
    listed = {entry["user_id"]: entry for entry in map(json.loads, out.splitlines())}
    assert listed[user]["name"] == "carol" and [k["key_id"] for k in listed[user]["keys"]] == [key_id]
    assert created["key"] not in out  # secrets are shown once, at creation

    code, out, _ = cli("users", "set", user, "--public-by-default")
    assert code == 0 and json.loads(out) == {"user_id": user, "public_by_default": True}
    code, out, _ = cli("users", "set", user, "--private-by-default")
    assert json.loads(out)["public_by_default"] is False

    code, out, _ = cli("users", "rotate", key_id)
    rotated = json.loads(out)
    assert code == 0 and rotated["revoked"] == key_id and rotated["user_id"] == user
    assert rotated["key_id"] != key_id and rotated["key"] != created["key"]
    code, out, _ = cli("users", "revoke", rotated["key_id"])
    assert code == 0 and json.loads(out)["revoked_at"]

    code, out, _ = cli("users", "reconcile", "--dry-run")
    assert code == 0 and json.loads(out) == {"dry_run": True, "users": 1, "drifted": []}

    code, _, err = cli("users", "create", "--user-id", "Not-A-UUID")
    assert code == 2 and err.startswith("error:")


def test_a_dead_letter_is_listed_redriven_and_purged(cli: Cli, data: Path) -> None:
    """What the consumer refuses is in the DLQ with its reason; a redrive sends it through the
    consumer again (and back, still not an image); a purge needs --yes."""
    put_straight(local_settings(data), f"{USER}/notes", b"plain text, not an image\n" * 4)
    code, out, _ = cli("consumer", "--burst")
    assert code == 0 and json.loads(out)["outcomes"] == {"dead_lettered": 1}

    code, out, _ = cli("dlq", "list", "--json")
    [letter] = json.loads(out)
    assert letter["error_code"] == "not_an_image" and letter["keys"] == [f"{USER}/notes"]
    code, out, _ = cli("dlq", "list")
    assert "not_an_image" in out and out.rstrip().endswith("1 message(s) in the DLQ")

    code, out, _ = cli("dlq", "redrive")
    assert code == 0 and out.startswith("moved 1 message(s)")
    code, out, _ = cli("consumer", "--burst")
    assert json.loads(out)["outcomes"] == {"dead_lettered": 1}

    code, _, err = cli("dlq", "purge")
    assert code == 2 and "--yes" in err
    code, out, _ = cli("dlq", "purge", "--yes")
    assert code == 0 and out.startswith("purged")
    assert json.loads(cli("dlq", "list", "--json")[1]) == []


def test_undelivered_webhook_events_are_listed_and_sent_again(cli: Cli, data: Path) -> None:
    settings = local_settings(data)
    payload = json.dumps({"type": "image.ready", "data": {"image_id": "cat"}}).encode()
    envelope = Envelope(Event(USER, "evt_1", "image.ready", payload), attempts=5)

    async def dead_letter() -> None:
        async with open_backend(settings) as ports:
            attributes = dead_letter_attributes("m-1", "webhook_failed", "503 from the receiver", 5)
            await ports.outbox_dlq.send(envelope.encode(), attributes)
            await ports.outbox_dlq.send("{not an envelope", dead_letter_attributes("m-2", "poison", "bad", 1))

    asyncio.run(dead_letter())
    code, out, _ = cli("webhooks", "list", "--json")
    events = {event["event_id"] or event["body"]: event for event in json.loads(out)}
    assert code == 0 and events["evt_1"]["image_id"] == "cat" and events["evt_1"]["owner"] == USER
    assert events["evt_1"]["error_code"] == "webhook_failed" and events["evt_1"]["attempts"] == "5"
    assert events["{not an envelope"]["error_code"] == "poison"  # shown, however malformed
    code, out, _ = cli("webhooks", "list")
    assert "evt_1  image.ready" in out and out.rstrip().endswith("2 event(s) not delivered")

    code, out, _ = cli("webhooks", "redeliver", "--event-id", "evt_1")
    assert code == 0 and out.startswith("sent 1 event(s) back")

    async def outbox() -> list[Any]:
        async with open_backend(settings) as ports:
            return [Envelope.decode(m.body) for m in await ports.outbox.receive(10, 0)]

    [again] = asyncio.run(outbox())
    assert again.event == envelope.event and again.attempts == 0  # attempts renewed
    assert len(json.loads(cli("webhooks", "list", "--json")[1])) == 1  # the other one stays


def test_provision_reconcile_and_gc_report_in_json(cli: Cli, data: Path) -> None:
    code, out, _ = cli("provision")
    assert code == 0 and json.loads(out) == {"data_dir": str(data)}
    key = f"{USER}/orphan"
    put_straight(local_settings(data), key, b"\xff\xd8\xff" + b"\0" * 64)  # no record made yet
    code, out, _ = cli("reconcile", "--dry-run", "--min-age", "0")
    report = json.loads(out)
    assert code == 0 and report["originals"] == 1 and report["missing_records"] == [key]
    code, out, _ = cli("gc", "--dry-run", "--grace", "0")
    assert code == 0 and json.loads(out)["orphaned_originals"] == {"count": 1, "bytes": 67}
    code, out, _ = cli("gc", "--grace", "0")
    assert json.loads(out)["orphaned_originals"]["count"] == 1 and json.loads(out)["dry_run"] is False
    assert json.loads(cli("reconcile", "--dry-run", "--min-age", "0")[1])["originals"] == 0


def test_a_bad_setting_is_named_and_nothing_runs(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSVC_CONSUMER_MAX_ATTEMPTS", "lots")
    code, out, err = cli("users", "list")
    assert code == 2 and out == "" and "IMGSVC_CONSUMER_MAX_ATTEMPTS" in err


def test_a_data_directory_is_backed_up_and_restored(cli: Cli, data: Path, tmp_path: Path) -> None:
    code, out, _ = cli("users", "create", "--name", "carol")
    assert code == 0, out
    code, out, err = cli("backup", str(tmp_path / "b"))
    assert code == 0 and json.loads(out)["schema_version"] == 1, (out, err)
    code, out, err = cli("restore", str(tmp_path / "b"), str(tmp_path / "r"))
    assert code == 0, (out, err)
    code, out, err = cli("restore", str(tmp_path / "b"), str(tmp_path / "r"))
    assert (
        code == 2
        and err.strip() == f"error: {tmp_path / 'r'} exists and is not an empty directory: choose a new one"
    )
    code, out, _ = cli("users", "list", "--data-dir", str(tmp_path / "r"))
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["carol"]
    assert main(["backup", str(tmp_path / "c")]) == 2  # no data directory: nothing to back up


def test_doctor_reports_one_line_a_check(cli: Cli, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("users", "list")[0] == 0  # the directory made
    code, out, _ = cli("doctor")
    lines = out.strip().splitlines()
    assert code == 0 and lines[-1] == f"{len(lines) - 1} ok, 0 failed", out
    assert all(line.startswith("ok  ") for line in lines[:-1]), out
    monkeypatch.setenv("IMGSVC_MIN_FREE_BYTES", str(2**50))
    code, out, _ = cli("doctor")
    assert code == 1 and "FAIL  free disk:" in out and out.strip().endswith("ok, 1 failed"), out
    monkeypatch.delenv("IMGSVC_MIN_FREE_BYTES")
    (data / "state.db").chmod(0o644)  # seen as it is: the doctor narrows nothing
    code, out, _ = cli("doctor")
    assert code == 1 and "FAIL  file modes: readable by others:" in out, out
    assert (data / "state.db").stat().st_mode & 0o777 == 0o644
