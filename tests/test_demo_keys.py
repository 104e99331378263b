"""The embedded stack's demo keys survive a restart; a demo keys file that is not ours never stops it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from config.settings import SEED_USER_IDS, Settings
from pipeline.backends import open_backend
from pipeline.core.accounts import Accounts
from pipeline.core.demo import read_demo_keys, seed_demo_users
from tests.support.clients import bearer
from tests.support.processes import WebProcess, process_env
from tests.support.settings import USER

#: Seeding and restoring keys are the service's own, on any tables: a fresh data directory per
#: `make_settings` call is a fresh start. `python -m web` below runs its own embedded stack.
pytestmark = [pytest.mark.e2e, pytest.mark.backend("local")]

KEY = "isk_0123456789abcdef_" + "K" * 43


async def seed(settings: Settings) -> dict[str, str]:
    """A fresh start of the embedded stack's seeding: new, empty tables every time."""
    async with open_backend(settings, provision_first=True) as ports:
        return await seed_demo_users(ports.tables, settings)


async def authenticates(settings: Settings, key: str) -> str:
    async with open_backend(settings) as ports:
        return await Accounts(ports.tables).authenticate(key)


async def test_restore_key_stores_the_same_key_id_and_secret(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with open_backend(settings, provision_first=True) as ports:
        accounts = Accounts(ports.tables)
        await accounts.create_user(USER)
        restored = await accounts.restore_key(USER, KEY)
        assert (restored.key_id, restored.user_id, restored.key) == ("0123456789abcdef", USER, KEY)
        assert await accounts.authenticate(KEY) == USER
        assert (await accounts.restore_key(USER, KEY)).key == KEY  # idempotent
        assert [k["prefix"] for k in await accounts.keys(USER)] == ["isk_0123456789abcdef"]
        with pytest.raises(ValueError, match="taken"):  # same id, another secret
            await accounts.restore_key(USER, KEY[:-1] + "L")
        other = SEED_USER_IDS[0]
        await accounts.create_user(other)
        with pytest.raises(ValueError, match="taken"):  # same key, another user
            await accounts.restore_key(other, KEY)
        for malformed in ("", "isk_x", KEY + "x", KEY.replace("isk_", "key_")):
            with pytest.raises(ValueError, match="isk_"):
                await accounts.restore_key(USER, malformed)
        await accounts.revoke("0123456789abcdef")
        with pytest.raises(ValueError):  # a revoked key is not brought back
            await accounts.restore_key(USER, KEY)


async def test_seeding_again_keeps_the_keys_in_the_file(
    tmp_path: Path, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    keys_file = tmp_path / "keys.json"
    first = make_settings(IMGSVC_DEMO_KEYS_FILE=str(keys_file))
    keys = await seed(first)
    second = make_settings(IMGSVC_DEMO_KEYS_FILE=str(keys_file))  # a restart: empty tables
    with caplog.at_level("INFO", logger="pipeline.core.demo"):
        assert await seed(second) == keys
    assert "kept from the previous start for 5 of 5 users" in caplog.text
    assert read_demo_keys(keys_file) == keys and keys_file.stat().st_mode & 0o777 == 0o600
    assert await authenticates(second, keys[USER]) == USER


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe binary",
        b"[1, 2]",
        b'{"keys": 5}',
        b'{"keys": {"%s": 7}}' % USER.encode(),
        b'{"keys": {"%s": "isk_nope"}}' % USER.encode(),
        json.dumps({"keys": {"0d7f9b7c-54d2-4a3b-9c52-6d6f1d1b2a3c": KEY}}).encode(),  # another user's
        json.dumps({"keys": dict.fromkeys(SEED_USER_IDS, KEY)}).encode(),  # one key for everyone
    ],
)
async def test_a_demo_keys_file_that_is_not_ours_gives_new_keys(
    tmp_path: Path, make_settings: Callable[..., Settings], content: bytes
) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_bytes(content)
    settings = make_settings(IMGSVC_DEMO_KEYS_FILE=str(keys_file))
    keys = await seed(settings)
    assert set(keys) == set(SEED_USER_IDS) and len(set(keys.values())) == 5
    assert read_demo_keys(keys_file) == keys and keys_file.stat().st_mode & 0o777 == 0o600
    for user_id, key in keys.items():
        assert await authenticates(settings, key) == user_id


def printed_keys(log: str) -> dict[str, str]:
    return dict(re.findall(r"demo user user_id=(\S+) key=(\S+)", log))


async def images_status(api_url: str, key: str) -> int:
    async with (
        aiohttp.ClientSession(api_url, headers=bearer(key)) as session,
        session.get("/images") as response,
    ):
        return response.status


async def test_python_m_web_restarted_accepts_the_same_demo_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    env = process_env(IMGSVC_DEMO_KEYS_FILE=str(keys_file))
    args = ("--embedded-port", "0")
    async with WebProcess(*args, env=env, log=tmp_path / "first.log") as web:
        first = printed_keys(web.text)
        assert first == read_demo_keys(keys_file) and "kept" not in web.text
        assert await images_status(web.url, first[USER]) == 200
        assert await web.stop() == 0

    async with WebProcess(*args, env=env, log=tmp_path / "second.log") as web:  # a new, empty stack
        assert printed_keys(web.text) == first
        assert "demo API keys kept from the previous start for 5 of 5 users" in web.text
        assert await images_status(web.url, first[USER]) == 200
        assert await web.stop() == 0

    keys_file.write_text('{"keys": ')  # cut short: the next start issues new keys and rewrites it
    async with WebProcess(*args, env=env, log=tmp_path / "third.log") as web:
        fresh = printed_keys(web.text)
        assert set(fresh) == set(SEED_USER_IDS) and not set(fresh.values()) & set(first.values())
        assert fresh == read_demo_keys(keys_file) and keys_file.stat().st_mode & 0o777 == 0o600
        assert "demo keys file not used" in web.text and "kept" not in web.text
        assert await images_status(web.url, fresh[USER]) == 200
        assert await images_status(web.url, first[USER]) == 401
        assert await web.stop() == 0
