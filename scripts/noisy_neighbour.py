"""One hostile tenant against `python -m web`, and what another user sees meanwhile.

Starts the service with its default bounds (local backend, or the embedded moto stack), then for
each attack runs it for `--seconds` while a second user, from another client address, keeps
using the service: reading its image's record and thumbnail every 100 ms, asking for a new 100 px
variant every 2 s, and uploading a small image every 3 s (timed until it is ready); the admin
listener's readiness is read every 200 ms. The same probe runs first with no attack, as the
baseline. Each attack is one row of RELIABILITY.md's table:

- slow_readers: 300 connections reading a 4 MB original through a signed link at 4 KB/s
  (bounds: connections per client, the send rate floor);
- long_polls: 400 loops of `?wait=20` on an image awaiting its upload, one key (long polls
  per user, connections per client);
- costly_variants: upscaled 4000 px AVIF q=100 variants of a 16 MP noise PNG, 4 at a time
  (the variant cost bound, the fair queue, variants in progress per user);
- variant_storage: unique upscaled q=100 PNG variants of one image, 4 at a time (quality and
  growth caps, variants per image, the rate of new variants);
- decode_bombs: uploads of a small PNG that decodes to 10000 x 10000, 8 at a time (the decode
  budget per user, the consumer's share per user, workers taken in turn, worker recycling);
- trickle_uploads: 4 users x 8 uploads trickling at 600 B/s (upload buffer reserved as bytes
  arrive, uploads per user);
- wrong_keys: 300 requests a second with wrong keys from one address (failures refused in-process).

    python scripts/noisy_neighbour.py                       # every attack, local backend
    python scripts/noisy_neighbour.py --backend moto        # the embedded AWS stack
    python scripts/noisy_neighbour.py --attacks wrong_keys --seconds 10

Prints a Markdown table, and with `--json` one JSON document. Targets (this 2-core machine): the
other user's requests succeed >= 95% with p95 <= 500 ms, its variant within 10 s, its upload
ready within 5 s, the admin listener within 100 ms, and no 5xx but 503/507 with Retry-After.
Traffic goes to 127.0.0.1 only; every attack is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import SEED_USER_IDS  # noqa: E402

VICTIM = SEED_USER_IDS[2]
ATTACKER = SEED_USER_IDS[0]
#: The other users of the multi-user attack (trickle_uploads).
ACCOMPLICES = (SEED_USER_IDS[0], SEED_USER_IDS[1], SEED_USER_IDS[3], SEED_USER_IDS[4])
VICTIM_ADDRESS = "127.0.0.2"  # another client address than the attacker's 127.0.0.1
TIMEOUT = aiohttp.ClientTimeout(total=30)


# The images ------------------------------------------------------------------------------------


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.putpixel((seed % width, 0), (seed % 256, 0, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG", compress_level=1)
    return out.getvalue()


def bomb_png(side: int, seed: int) -> bytes:
    """A real PNG of `side` x `side` grey pixels: a few hundred kilobytes that decode to side²."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" + bytes([seed % 256]) * side
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# The service -----------------------------------------------------------------------------------


class Service:
    """`python -m web` on the local backend (`--data-dir`) or the embedded moto stack."""

    def __init__(self, backend: str, scratch: Path) -> None:
        self.backend = backend
        self.scratch = scratch
        self.process: subprocess.Popen[bytes] | None = None
        self.url = self.admin_url = ""
        self.keys: dict[str, str] = {}

    def start(self) -> None:
        keys = self.scratch / "data" / "demo-keys.json"
        args = [sys.executable, "-m", "web", "--port", "0", "--admin-port", "0"]
        if self.backend == "local":
            args += ["--data-dir", str(self.scratch / "data")]
        else:
            args += ["--embedded-port", "0"]
            keys = self.scratch / "demo-keys.json"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "IMGSVC_LOG_FORMAT": "text",
            "IMGSVC_LOG_LEVEL": "INFO",  # its listening lines are read here; the rest goes to web.log
            "IMGSVC_METRICS_PORT": "0",
            "IMGSVC_WORKERS": "1",  # one process's bounds and shares, as the table says
            "IMGSVC_DEMO_KEYS_FILE": str(keys),
            "IMGSVC_UPLOAD_MODES": "api,presigned",  # long polls wait on an upload URL's image
            "IMGSVC_EMBEDDED_TRUSTED": "true",  # loopback only, this script's own stack
            "IMGSVC_INPUT_DIR": str(ROOT / "input"),
        }
        log = (self.scratch / "web.log").open("wb")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        deadline = time.monotonic() + 90
        seen = b""
        while not (self.url and self.admin_url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"python -m web did not start:\n{seen.decode(errors='replace')}")
            line = self.process.stderr.readline()
            seen += line
            if found := re.search(rb"API listening url=(\S+)", line):
                self.url = found.group(1).decode()
            if found := re.search(rb"admin listening url=(\S+)", line):
                self.admin_url = found.group(1).decode()
        threading_drain(self.process.stderr, log)
        self.keys = json.loads(keys.read_text())["keys"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def worker_rss(self) -> list[int]:
        """Resident bytes of each imaging worker (the service's grandchildren and children)."""
        assert self.process is not None
        found = []
        for pid in _descendants(self.process.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                continue
            if b"multiprocessing" in cmdline:
                found.append(rss)
        return found


def threading_drain(stream: Any, log: Any) -> None:
    import threading

    def drain() -> None:
        for line in stream:
            log.write(line)

    threading.Thread(target=drain, daemon=True).start()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# Measuring the other user ------------------------------------------------------------------------


@dataclass
class Probe:
    """What the other user saw during one attack."""

    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    succeeded: int = 0
    variant_seconds: list[float] = field(default_factory=list)
    upload_ready_seconds: list[float] = field(default_factory=list)
    admin_ms: list[float] = field(default_factory=list)
    #: 5xx answers that were not 503/507 with Retry-After, on either side.
    bad_5xx: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {
            "requests": self.answered,
            "success": round(self.succeeded / self.answered, 3) if self.answered else None,
            "p50_ms": _ms(pct(self.latencies, 0.5)),
            "p95_ms": _ms(pct(self.latencies, 0.95)),
            "variant_s_max": _round(max(self.variant_seconds, default=None)),
            "upload_ready_s_max": _round(max(self.upload_ready_seconds, default=None)),
            "admin_p95_ms": _round(pct(self.admin_ms, 0.95)),
            "bad_5xx": self.bad_5xx,
            "statuses": dict(sorted(self.statuses.items())),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def check_5xx(response: aiohttp.ClientResponse, probe: Probe) -> None:
    if response.status >= 500 and not (response.status in (503, 507) and "Retry-After" in response.headers):
        probe.bad_5xx += 1


class Victim:
    """The other user: its requests, timed, from its own client address."""

    def __init__(self, url: str, key: str, probe: Probe, stop: asyncio.Event, image: str) -> None:
        self.url, self.key, self.probe, self.stop, self.image = url, key, probe, stop, image

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        connector = aiohttp.TCPConnector(local_addr=(VICTIM_ADDRESS, 0), limit=8)
        async with aiohttp.ClientSession(
            self.url, headers=headers, timeout=TIMEOUT, connector=connector
        ) as self.session:
            await asyncio.gather(self.reads(), self.variants(), self.uploads())

    async def timed(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse | None:
        probe, started = self.probe, time.monotonic()
        probe.answered += 1
        try:
            async with self.session.request(method, path, **kwargs) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            probe.latencies.append(time.monotonic() - started)
            return None
        probe.latencies.append(time.monotonic() - started)
        probe.statuses[response.status] = probe.statuses.get(response.status, 0) + 1
        check_5xx(response, probe)
        if response.status < 400:
            probe.succeeded += 1
        return response

    async def reads(self) -> None:
        paths = (f"/images/{self.image}", f"/download/thumbnail?image_id={self.image}")
        n = 0
        while not self.stop.is_set():
            await self.timed("GET", paths[n % 2])
            n += 1
            await asyncio.sleep(0.1)

    async def variants(self) -> None:
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            query = f"w={100 + n}&h=100&fit=cover"  # a new one each time: made, not served
            response = await self.timed("GET", f"/images/{self.image}/variant?{query}")
            ok = response is not None and response.status == 200
            self.probe.variant_seconds.append(time.monotonic() - started if ok else 999.0)
            n += 1
            await _sleep(self.stop, 2.0)

    async def uploads(self) -> None:
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            image_id = f"v{int(time.time() * 1000)}{n}"
            response = await self.timed("PUT", f"/images/{image_id}", data=jpeg(320, 240, n))
            ready = None
            if response is not None and response.status == 202:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    while time.monotonic() - started < 30 and ready is None:
                        async with self.session.get(f"/images/{image_id}?wait=5") as status:
                            body = await status.json()
                        if body.get("status") == "ready":
                            ready = time.monotonic() - started
            self.probe.upload_ready_seconds.append(ready if ready is not None else 999.0)
            n += 1
            await _sleep(self.stop, 3.0)


async def admin(admin_url: str, probe: Probe, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with s.get(f"{admin_url}/health/ready") as response:
                    await response.read()
                probe.admin_ms.append((time.monotonic() - started) * 1000)
            except (aiohttp.ClientError, TimeoutError):
                probe.admin_ms.append(99_999.0)
            await asyncio.sleep(0.2)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# The attacks -------------------------------------------------------------------------------------

Attack = Callable[["Context"], Coroutine[Any, Any, None]]


@dataclass
class Context:
    service: Service
    stop: asyncio.Event
    probe: Probe
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    def session(self, user: str = ATTACKER, limit: int = 0, **headers: str) -> aiohttp.ClientSession:
        key = self.service.keys[user]
        connector = aiohttp.TCPConnector(limit=limit, force_close=False)
        return aiohttp.ClientSession(
            self.service.url,
            headers={"Authorization": f"Bearer {key}", **headers},
            timeout=TIMEOUT,
            connector=connector,
        )

    async def loops(self, count: int, body: Callable[[int], Awaitable[None]]) -> None:
        """`count` loops of `body` until the attack's time is up; a refused step pauses 10 ms (the
        attacker shares this machine's two cores with the service)."""

        async def loop(n: int) -> None:
            while not self.stop.is_set():
                try:
                    await body(n)
                except (aiohttp.ClientError, TimeoutError, ConnectionError):
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(loop(n) for n in range(count)))

    def count(self, response: aiohttp.ClientResponse) -> None:
        check_5xx(response, self.probe)
        key = f"attacker_{response.status}"
        self.notes[key] = self.notes.get(key, 0) + 1


async def slow_readers(ctx: Context) -> None:
    async with ctx.session() as s:
        async with s.put("/images/big", data=noise_png(1150)) as response:  # ~4 MB
            assert response.status == 202, await response.text()
        async with s.get("/images/big/url?rendition=original&expires_in=3600") as response:
            link = (await response.json())["url"]
    cut = 0

    async def read_slowly(n: int) -> None:
        nonlocal cut
        reader, writer = await asyncio.open_connection("127.0.0.1", int(link.split(":")[2].split("/")[0]))
        path = link.split("/", 3)[3]
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        try:
            while not ctx.stop.is_set():
                chunk = await reader.read(400)
                if not chunk:
                    cut += 1
                    return
                await asyncio.sleep(0.1)  # 4 KB/s
        except ConnectionError:
            cut += 1
        finally:
            writer.close()

    await ctx.loops(300, read_slowly)
    ctx.notes["connections_cut"] = cut


async def long_polls(ctx: Context) -> None:
    async with ctx.session() as s:
        body = {"content_length": 1000, "content_type": "image/jpeg", "image_id": "awaited"}
        async with s.post("/images/upload-url", json=body) as response:
            assert response.status == 201, await response.text()
    async with ctx.session() as s:

        async def poll(n: int) -> None:
            async with s.get("/images/awaited?wait=20") as response:
                await response.read()
                ctx.count(response)
                if response.status != 200:
                    await asyncio.sleep(0.01)

        await ctx.loops(400, poll)


async def costly_variants(ctx: Context) -> None:
    async with ctx.session() as s:
        async with s.put("/images/noise", data=noise_png(4000)) as response:  # 48 MB, 16 MP
            assert response.status == 202, await response.text()
        await _ready(s, "noise")

        async def ask(n: int) -> None:
            width = 4000 - (int(time.monotonic() * 10) % 900) - n
            async with s.get(f"/images/noise/variant?w={width}&format=avif&q=100&upscale=true") as response:
                await response.read()
                ctx.count(response)

        await ctx.loops(4, ask)


async def variant_storage(ctx: Context) -> None:
    async with ctx.session() as s:
        async with s.put("/images/seed", data=jpeg(1200, 900)) as response:
            assert response.status == 202
        await _ready(s, "seed")
        counter = iter(range(10**9))

        async def ask(n: int) -> None:
            width = 1200 + next(counter) % 1200
            async with s.get(f"/images/seed/variant?w={width}&q=100&upscale=true&format=png") as response:
                await response.read()
                ctx.count(response)

        await ctx.loops(4, ask)


async def decode_bombs(ctx: Context) -> None:
    bombs = [bomb_png(10_000, n) for n in range(4)]
    async with ctx.session() as s:
        counter = iter(range(10**9))

        async def upload(n: int) -> None:
            k = next(counter)
            async with s.put(f"/images/bomb{k}", data=bombs[k % len(bombs)]) as response:
                await response.read()
                ctx.count(response)
                if response.status == 429:
                    await asyncio.sleep(0.05)

        await ctx.loops(8, upload)
    ctx.notes["worker_rss_mb_after"] = [round(r / 2**20) for r in ctx.service.worker_rss()]


async def trickle_uploads(ctx: Context) -> None:
    async def trickle(user: str, n: int) -> None:
        key = ctx.service.keys[user]
        port = int(ctx.service.url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"PUT /images/trickle{n} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Length: 8000000\r\n\r\n".encode()
            )
            body = jpeg(64, 48) + b"\0" * 100_000
            for start in range(0, len(body), 60):
                if ctx.stop.is_set():
                    return
                writer.write(body[start : start + 60])
                await writer.drain()
                await asyncio.sleep(0.1)  # 600 B/s
        finally:
            writer.close()

    async def user_loops(user: str) -> None:
        await ctx.loops(8, lambda n: trickle(user, n))

    await asyncio.gather(*(user_loops(user) for user in ACCOMPLICES))


async def wrong_keys(ctx: Context) -> None:
    sent = 0
    async with aiohttp.ClientSession(ctx.service.url, timeout=TIMEOUT) as s:
        deadline = time.monotonic() + ctx.seconds
        while time.monotonic() < deadline and not ctx.stop.is_set():
            second = time.monotonic()
            batch = [
                s.get("/images/x", headers={"Authorization": f"Bearer isk_wrong{sent + i}.nope"})
                for i in range(30)
            ]
            for response in await asyncio.gather(*batch, return_exceptions=True):
                if isinstance(response, aiohttp.ClientResponse):
                    ctx.count(response)
                    response.release()
            sent += 30
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - second)))  # 300 a second
    ctx.notes["sent"] = sent


async def _ready(s: aiohttp.ClientSession, image_id: str) -> None:
    for _ in range(60):
        async with s.get(f"/images/{image_id}?wait=5") as response:
            if (await response.json()).get("status") != "pending":
                return


ATTACKS: dict[str, Attack] = {
    "slow_readers": slow_readers,
    "long_polls": long_polls,
    "costly_variants": costly_variants,
    "variant_storage": variant_storage,
    "decode_bombs": decode_bombs,
    "trickle_uploads": trickle_uploads,
    "wrong_keys": wrong_keys,
}


# Running -----------------------------------------------------------------------------------------


async def measure(service: Service, name: str, attack: Attack | None, seconds: float) -> dict[str, Any]:
    probe = Probe()
    stop = asyncio.Event()
    ctx = Context(service, stop, probe, seconds)
    image = f"mine-{name}"
    headers = {"Authorization": f"Bearer {service.keys[VICTIM]}"}
    async with aiohttp.ClientSession(service.url, headers=headers, timeout=TIMEOUT) as s:
        async with s.put(f"/images/{image}", data=jpeg(800, 600)) as response:
            assert response.status == 202, await response.text()
        await _ready(s, image)
    # The other user and the admin probe run in a process of their own: their latencies are the
    # service's, not this process's event loop, busy with the attack.
    order = {"url": service.url, "admin": service.admin_url, "key": service.keys[VICTIM], "image": image}
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", json.dumps({**order, "seconds": seconds}),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    attacking = asyncio.create_task(attack(ctx)) if attack else None
    await asyncio.sleep(seconds)
    stop.set()
    out, _ = await asyncio.wait_for(watcher.communicate(), 60)
    seen = json.loads(out)
    if attacking is not None:
        done, _ = await asyncio.wait({attacking}, timeout=40)
        if attacking in done and attacking.exception() is not None:
            ctx.notes["attack_error"] = repr(attacking.exception())
        attacking.cancel()
    await asyncio.sleep(1.0)  # what the attack left running winds down before the next one
    seen["bad_5xx"] += probe.bad_5xx  # the attacker's own
    return {"attack": name, **seen, "notes": ctx.notes}


async def watch(order: dict[str, Any]) -> dict[str, Any]:
    """`--probe`: the other user and the admin probe for `order["seconds"]`; the table's row."""
    probe, stop = Probe(), asyncio.Event()
    victim = Victim(order["url"], order["key"], probe, stop, order["image"])
    watchers = [asyncio.create_task(victim.run()), asyncio.create_task(admin(order["admin"], probe, stop))]
    await asyncio.sleep(order["seconds"])
    stop.set()
    await asyncio.wait(watchers, timeout=40)
    return probe.row()


async def run(
    backend: str, names: list[str], seconds: float, log: Path | None = None
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="noisy-") as scratch:
        service = Service(backend, Path(scratch))
        service.start()
        try:
            rows = [await measure(service, "baseline", None, seconds)]
            for name in names:
                rows.append(await measure(service, name, ATTACKS[name], seconds))
            await asyncio.sleep(60 if "decode_bombs" in names else 0)
            rows[0]["notes"]["worker_rss_mb_idle_at_end"] = [round(r / 2**20) for r in service.worker_rss()]
        finally:
            service.stop()
            if log is not None:
                await asyncio.to_thread(shutil.copyfile, Path(scratch) / "web.log", log)
    return rows


def table(rows: list[dict[str, Any]], backend: str) -> str:
    lines = [
        f"backend: {backend}",
        "| attack | other user: ok | p50 ms | p95 ms | 100 px variant s (max) | upload ready s (max) "
        "| admin p95 ms | bad 5xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ok = f"{row['success'] * 100:.1f}%" if row["success"] is not None else "-"
        lines.append(
            f"| {row['attack']} | {ok} | {row['p50_ms']} | {row['p95_ms']} | {row['variant_s_max']} "
            f"| {row['upload_ready_s_max']} | {row['admin_p95_ms']} | {row['bad_5xx']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("local", "moto"), default="local")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma list of " + ", ".join(ATTACKS))
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="each attack's length (and the baseline's)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", type=Path, help="keep the service's log here")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # the other user's process (JSON order)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(asyncio.run(watch(json.loads(args.probe)))))
        return 0
    names = [n.strip() for n in args.attacks.split(",") if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        parser.error(f"unknown attacks: {', '.join(unknown)}")
    rows = asyncio.run(run(args.backend, names, args.seconds, args.log))
    print(
        json.dumps({"backend": args.backend, "rows": rows}, indent=1)
        if args.json
        else table(rows, args.backend)
    )
    for row in rows:
        if row["notes"]:
            print(f"{row['attack']}: {json.dumps(row['notes'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
