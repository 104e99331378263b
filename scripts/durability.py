"""Nothing answered 202 is lost to `kill -9`: the local backend's durability, end to end.

Starts `python -m web --data-dir DIR`, uploads N distinct images concurrently, kills the process
with SIGKILL once a share of them was answered, starts it again on the same directory and
checks that every upload answered 202 ends `ready` (or `failed` with its reason), none missing;
that each ready image's original is the bytes that were sent and its thumbnail was made from
that original (its size and colour); and that no image is left pending.

    python scripts/durability.py                  # the full run: 300 uploads
    python scripts/durability.py --uploads 40     # what the test in CI runs

Prints one JSON line and exits 1 when anything was lost or disagrees.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
USER = "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e"  # one of the demo users
THUMBNAIL_SIDE = 256


def image_for(number: int) -> tuple[bytes, tuple[int, int], tuple[int, int, int]]:
    """A JPEG that only upload `number` sends: its own size and colour."""
    size = (120 + number % 400, 90 + (number * 7) % 300)
    colour = ((number * 37) % 256, (number * 91) % 256, (number * 53) % 256)
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=90)
    return out.getvalue(), size, colour


def fitted(size: tuple[int, int]) -> tuple[int, int]:
    """The thumbnail's size: within 256 x 256, aspect kept, never enlarged."""
    width, height = size
    scale = min(1.0, THUMBNAIL_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class Report:
    uploads: int
    accepted: int = 0
    refused_by_the_kill: int = 0
    ready: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    disagreeing: list[str] = field(default_factory=list)
    left_pending: list[str] = field(default_factory=list)
    seconds_to_settle: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.disagreeing or self.left_pending) and self.accepted > 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


class Web:
    """`python -m web --data-dir` as a child process, its log in a file."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str], *args: str) -> None:
        """`args`: more arguments for `python -m web`."""
        self.data_dir, self.log_path, self.env, self.args = data_dir, log_path, env, args
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        #: The admin listener's URL (health, readiness, metrics apart from the API).
        self.admin_url = ""

    async def start(self) -> str:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "web", "--data-dir", str(self.data_dir), "--port", "0", *self.args,
                cwd=ROOT, env=self.env, stdout=log, stderr=log,
            )  # fmt: skip
        async with asyncio.timeout(60):
            while True:
                text = self.log_path.read_bytes()[offset:].decode(errors="replace")
                api = re.search(r"API listening url=(\S+)", text)
                admin = re.search(r"admin listening url=(\S+)", text)
                if api and admin:
                    self.url, self.admin_url = api.group(1), admin.group(1)
                    return self.url
                if self.process.returncode is not None:
                    raise RuntimeError(f"web exited early:\n{text}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()


def demo_key(data_dir: Path) -> str:
    return str(json.loads((data_dir / "demo-keys.json").read_text())["keys"][USER])


async def upload_with_a_kill(web: Web, key: str, uploads: int, kill_after: float) -> tuple[set[int], int]:
    """Upload everything at once; SIGKILL the server after `kill_after` of them were answered.
    Returns the numbers answered 202 and how many requests the kill cut off."""
    accepted: set[int] = set()
    answered = 0
    cut = 0
    killed = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(web.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=timeout, connector=connector) as session:  # fmt: skip

        async def one(number: int) -> None:
            nonlocal answered, cut
            data, _, _ = image_for(number)
            try:
                async with session.put(f"/images/d{number}", data=data) as response:
                    await response.read()
                    if response.status == 202:
                        accepted.add(number)
                    answered += 1
            except (aiohttp.ClientError, TimeoutError):
                cut += 1
                return
            if answered >= uploads * kill_after and not killed.is_set():
                killed.set()
                await web.kill()

        await asyncio.gather(*(one(n) for n in range(uploads)))
    if not killed.is_set():
        await web.kill()
    return accepted, cut


async def settle(web: Web, key: str, uploads: int, accepted: set[int], timeout: float) -> Report:
    report = Report(uploads, accepted=len(accepted))
    started = time.monotonic()
    async with aiohttp.ClientSession(web.url, headers={"Authorization": f"Bearer {key}"}) as session:
        pending = set(accepted)
        states: dict[int, dict[str, Any]] = {}
        while pending and time.monotonic() - started < timeout:
            for number in sorted(pending):
                async with session.get(f"/images/d{number}") as response:
                    if response.status == 404:
                        continue  # not yet known: its event may still be leased by the dead process
                    body = await response.json()
                if body["status"] in ("ready", "failed"):
                    states[number] = body
                    pending.discard(number)
            await asyncio.sleep(0.5)
        report.seconds_to_settle = round(time.monotonic() - started, 1)
        for number in sorted(pending):
            async with session.get(f"/images/d{number}") as response:
                (report.missing if response.status == 404 else report.left_pending).append(f"d{number}")
        for number, body in sorted(states.items()):
            if body["status"] == "failed":
                report.failed[f"d{number}"] = str(body.get("error"))
            elif await agrees(session, number):
                report.ready += 1
            else:
                report.disagreeing.append(f"d{number}")
        # Uploads the kill cut off may or may not have been stored; none may stay pending. Their
        # events may be leased by the dead process as well: they too get until `timeout`.
        while True:
            cut_off = sorted(
                i["image_id"]
                for i in await list_all(session)
                if i["status"] == "pending" and i["image_id"] not in report.left_pending
            )
            if not cut_off or time.monotonic() - started >= timeout:
                break
            await asyncio.sleep(0.5)
        report.left_pending += cut_off
    return report


async def agrees(session: aiohttp.ClientSession, number: int) -> bool:
    """The original is the bytes sent; the thumbnail was made from it (size and colour)."""
    data, size, colour = image_for(number)
    async with session.get("/download/image", params={"user_id": USER, "image_id": f"d{number}"}) as got:
        if got.status != 200 or hashlib.sha256(await got.read()).digest() != hashlib.sha256(data).digest():
            return False
    params = {"user_id": USER, "image_id": f"d{number}"}
    async with session.get("/download/thumbnail", params=params) as got:
        if got.status != 200:
            return False
        thumbnail = Image.open(io.BytesIO(await got.read())).convert("RGB")
    if thumbnail.size != fitted(size):
        return False
    middle = thumbnail.getpixel((thumbnail.width // 2, thumbnail.height // 2))
    assert isinstance(middle, tuple)
    return all(abs(a - b) <= 12 for a, b in zip(middle, colour, strict=True))


async def list_all(session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        async with session.get("/images", params=params) as response:
            body = await response.json()
        images += body["images"]
        cursor = body.get("next_cursor")
        if not cursor:
            return images


async def run(data_dir: Path, log_path: Path, uploads: int, kill_after: float, timeout: float) -> Report:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "IMGSVC_LOG_FORMAT": "text",
        "IMGSVC_METRICS_PORT": "0",
        "IMGSVC_ADMIN_PORT": "0",
        "IMGSVC_WORKERS": "1",
        # A message leased by the killed process comes back after this; short, to settle sooner.
        "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": "5",
        "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1",
        "IMGSVC_USER_MAX_UPLOADS": "0",  # one user sends everything at once, on purpose
        "IMGSVC_MAX_CONNECTIONS_PER_CLIENT": "0",
        "IMGSVC_USER_UPLOAD_MEGAPIXELS_PER_SECOND": "0",
    }
    web = Web(data_dir, log_path, env)
    try:
        await web.start()
        accepted, cut = await upload_with_a_kill(web, demo_key(data_dir), uploads, kill_after)
        await web.start()  # same directory, after kill -9
        report = await settle(web, demo_key(data_dir), uploads, accepted, timeout)
        report.refused_by_the_kill = cut
        return report
    finally:
        await web.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--kill-after", type=float, default=0.5, help="share of answers before SIGKILL")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for every image")
    parser.add_argument("--data-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or Path(scratch) / "data"
        report = asyncio.run(
            run(data_dir, Path(scratch) / "web.log", args.uploads, args.kill_after, args.timeout)
        )
    print(json.dumps(report.as_dict()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
